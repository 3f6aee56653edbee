//! Upstream URLs (`http[s]://host:port[/prefix]`) and gRPC endpoints (`host:port`)
//! → [`Upstream`], checked with the `http` crate's own parsers: what passes here
//! is what the runtime later turns into an `http::Uri` and a `Host` header
//! value, so a bad byte is refused by validation instead of panicking a reload.

use std::str::FromStr;

use http::uri::{Authority, PathAndQuery};

use super::fields::escaped;
use crate::validated::Upstream;

/// `http://host:port[/prefix]` or `https://…` → `Upstream`.
pub(super) fn parse_upstream(url: &str) -> Result<Upstream, String> {
    let shown = escaped(url);
    let (rest, tls) = if let Some(r) = url.strip_prefix("http://") {
        (r, false)
    } else if let Some(r) = url.strip_prefix("https://") {
        (r, true)
    } else {
        return Err(format!("`{shown}` must start with http:// or https://"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let Some((host, port)) = authority.rsplit_once(':') else {
        return Err(format!("`{shown}` needs an explicit port (http://host:port)"));
    };
    if host.is_empty() || port.parse::<u16>().map(|p| p == 0).unwrap_or(true) {
        return Err(format!("`{shown}` has no valid host:port"));
    }
    check_authority(&shown, authority)?;
    let base_path = path.trim_end_matches('/');
    check_base_path(&shown, base_path)?;
    Ok(Upstream { authority: authority.to_string(), base_path: base_path.to_string(), tls })
}

/// `host:port` or `http://host:port[/prefix]` (a `dns:` name of a v2-http backend).
pub(super) fn parse_http_or_bare(text: &str) -> Result<Upstream, String> {
    if text.contains("://") {
        parse_upstream(text)
    } else {
        parse_upstream(&format!("http://{text}"))
    }
}

/// A gRPC endpoint: `host:port`, `http://host:port` or `https://host:port` (no path: gRPC paths are fixed).
pub(super) fn parse_grpc_endpoint(text: &str) -> Result<Upstream, String> {
    let url = if text.contains("://") { text.to_string() } else { format!("http://{text}") };
    let up = parse_upstream(&url)?;
    if !up.base_path.is_empty() {
        return Err(format!("`{}`: a gRPC endpoint is host:port, without a path", escaped(text)));
    }
    Ok(up)
}

/// Says which character is wrong, since a control character or a stray space
/// is invisible in the file.
fn check_authority(shown: &str, authority: &str) -> Result<(), String> {
    if let Some(c) = authority.chars().find(|c| !c.is_ascii_graphic()) {
        let what = if c.is_control() {
            "a control character"
        } else if c.is_whitespace() {
            "whitespace"
        } else {
            "a non-ASCII character (write an international name in its xn-- form)"
        };
        return Err(format!(
            "`{shown}`: the authority `{}` contains {what} (`{}`); it must be host:port",
            escaped(authority),
            c.escape_default()
        ));
    }
    if authority.contains('@') {
        return Err(format!("`{shown}`: user info (`user@`) is not supported; the authority must be host:port"));
    }
    Authority::from_str(authority)
        .map(drop)
        .map_err(|e| format!("`{shown}`: `{}` is not a valid URI authority ({e})", escaped(authority)))
}

fn check_base_path(shown: &str, base_path: &str) -> Result<(), String> {
    if base_path.is_empty() {
        return Ok(());
    }
    if base_path.contains(['?', '#']) {
        return Err(format!("`{shown}`: the path prefix must not have a query or fragment"));
    }
    PathAndQuery::from_str(base_path)
        .map(drop)
        .map_err(|e| format!("`{shown}`: `{}` is not a valid URI path ({e})", escaped(base_path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the runtime does with an endpoint (`runtime/src/backend/v2_http.rs`,
    /// `proxy/src/dataplane.rs`): whatever validation accepts must survive it.
    fn runtime_builds(up: &Upstream) {
        http::HeaderValue::from_str(&up.authority).expect("Host header");
        format!("http://{}{}/v2/models/m/infer", up.authority, up.base_path).parse::<http::Uri>().expect("request URI");
    }

    #[test]
    fn accepted_upstreams_build_in_the_runtime() {
        for (url, authority, base_path) in [
            ("http://127.0.0.1:9000", "127.0.0.1:9000", ""),
            ("http://triton:8000/prefix/", "triton:8000", "/prefix"),
            ("http://model_server.internal:80/a/b", "model_server.internal:80", "/a/b"),
            ("http://[::1]:8000", "[::1]:8000", ""),
            ("https://triton:8443/v", "triton:8443", "/v"),
        ] {
            let up = parse_upstream(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!((up.authority.as_str(), up.base_path.as_str()), (authority, base_path), "{url}");
            runtime_builds(&up);
        }
        runtime_builds(&parse_grpc_endpoint("triton:8001").unwrap());
    }

    #[test]
    fn rejected_upstreams_say_why() {
        for (url, says) in [
            ("ftp://h:1", "must start with http:// or https://"),
            ("h:1", "must start with http://"),
            ("http://h", "needs an explicit port"),
            ("http://h:0", "no valid host:port"),
            ("http://:80", "no valid host:port"),
            ("http://ba\u{1}d:80", "contains a control character (`\\u{1}`)"),
            ("http://h\u{7f}:80", "contains a control character (`\\u{7f}`)"),
            ("http://h\tx:80", "contains a control character (`\\t`)"),
            ("http://b d:80", "contains whitespace (` `)"),
            ("http://bücher:80", "contains a non-ASCII character"),
            ("http://user@h:80", "user info"),
            ("http://h{x}:80", "not a valid URI authority"),
            ("http://h:80/a b", "not a valid URI path"),
            ("http://h:80/a?x=1", "query or fragment"),
        ] {
            let e = parse_upstream(url).expect_err(url);
            assert!(e.contains(says), "{url:?}: `{e}` does not say `{says}`");
            assert!(!e.chars().any(|c| c.is_control()), "{url:?}: unescaped control character in `{e}`");
        }
        assert!(parse_grpc_endpoint("h:1/x").unwrap_err().contains("without a path"));
        assert!(parse_grpc_endpoint("b\u{1}d:1").unwrap_err().contains("control character"));
    }
}
