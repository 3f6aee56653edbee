//! Which of a client's request headers (HTTP) or metadata entries (gRPC) a
//! remote backend receives, so that its own auth, tenant and tracing headers
//! arrive. Always left out: hop-by-hop headers, what describes the body
//! Switchyard re-encodes (content type and length, encodings, the binary
//! extension's header length), `host`, `expect`, gRPC transport headers and
//! Switchyard's own `x-switchyard-*`. A backend's `forward_headers` narrows
//! the rest: `allow` (only these), then `deny`.

use http::header::{
    ACCEPT_ENCODING, CONNECTION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, EXPECT, HOST, PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderName};
use switchyard_config::ForwardHeaders;

/// Never forwarded, whatever the config says: standard names (compared
/// without touching their text; those every request carries first) ...
const FIXED_STANDARD: [HeaderName; 13] = [
    HOST,
    CONTENT_LENGTH,
    CONTENT_TYPE,
    ACCEPT_ENCODING,
    CONNECTION,
    EXPECT,
    TRANSFER_ENCODING,
    CONTENT_ENCODING,
    TE,
    TRAILER,
    UPGRADE,
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
];
/// ... and other names.
const FIXED_OTHER: [&str; 4] = ["keep-alive", "proxy-connection", "http2-settings", "inference-header-content-length"];

/// A remote backend's forwarding rule, resolved from its config once.
#[derive(Debug, Clone, Default)]
pub struct Forwarding {
    allow: Option<Vec<HeaderName>>,
    deny: Vec<HeaderName>,
}

impl Forwarding {
    pub fn new(cfg: &ForwardHeaders) -> Forwarding {
        // Validated header names; one that does not parse could never match anyway.
        let names = |v: &[std::sync::Arc<str>]| v.iter().filter_map(|n| n.parse().ok()).collect::<Vec<HeaderName>>();
        Forwarding { allow: cfg.allow.as_deref().map(names), deny: names(&cfg.deny) }
    }

    /// Whether a client header of this name reaches the backend.
    pub fn forwards(&self, name: &HeaderName) -> bool {
        if FIXED_STANDARD.contains(name) {
            return false;
        }
        let n = name.as_str();
        // Every other fixed name starts with one of these letters: most names skip the compares.
        let fixed = match n.as_bytes().first() {
            Some(b'k' | b'p' | b'h' | b'i') => FIXED_OTHER.contains(&n),
            Some(b'x') => n.starts_with("x-switchyard-"),
            Some(b'g') => n.starts_with("grpc-"),
            _ => false,
        };
        if fixed {
            return false;
        }
        if let Some(allow) = &self.allow {
            if !allow.contains(name) {
                return false;
            }
        }
        !self.deny.contains(name)
    }

    /// Appends the client's forwarded entries to `out` (repeated names kept in order).
    pub fn apply(&self, client: &HeaderMap, out: &mut HeaderMap) {
        for (name, value) in client {
            if self.forwards(name) {
                out.append(name.clone(), value.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http::HeaderValue;

    use super::*;

    fn client() -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer t"),
            ("x-tenant", "acme"),
            ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            ("cookie", "a=1"),
            ("connection", "keep-alive"),
            ("content-type", "application/json"),
            ("content-length", "12"),
            ("accept-encoding", "gzip"),
            ("x-switchyard-variant", "canary"),
            ("grpc-timeout", "5S"),
            ("host", "switchyard:8000"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        h.append("x-tenant", HeaderValue::from_static("second"));
        h
    }

    fn forwarded(f: &Forwarding) -> Vec<(String, String)> {
        let mut out = HeaderMap::new();
        f.apply(&client(), &mut out);
        out.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string())).collect()
    }

    #[test]
    fn by_default_everything_but_the_fixed_exclusions() {
        let got = forwarded(&Forwarding::default());
        let names: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["authorization", "x-tenant", "x-tenant", "traceparent", "cookie"]);
        assert_eq!(got[2].1, "second");
    }

    #[test]
    fn allow_then_deny() {
        let cfg = ForwardHeaders {
            allow: Some(vec![Arc::from("authorization"), Arc::from("x-tenant"), Arc::from("connection")]),
            deny: vec![Arc::from("x-tenant")],
        };
        // `connection` stays out even when allowed.
        assert_eq!(forwarded(&Forwarding::new(&cfg)), [("authorization".to_string(), "Bearer t".to_string())]);
        let deny_only = ForwardHeaders { allow: None, deny: vec![Arc::from("cookie")] };
        assert!(forwarded(&Forwarding::new(&deny_only)).iter().all(|(k, _)| k != "cookie"));
    }
}
