//! A JWKS fetched from a URL (`auth.jwt.jwks_url`): over HTTPS with the
//! `jwks_tls` settings (`switchyard_tls`: a private CA, a client
//! certificate, re-read on change), on a thread of its own. A fetched set is
//! used for its `Cache-Control: max-age`, bounded below by
//! `JWKS_MIN_REFETCH` and above by `jwks_refresh` (the period when the
//! server sends none). A token whose `kid` is unknown asks for an early
//! fetch — the issuer may have rotated its keys — at most once per
//! `JWKS_MIN_REFETCH`, so made-up `kid`s cannot turn into a flood of fetches.
//! A failed fetch keeps the last good set, is logged and counted
//! (`switchyard_jwks_fetches_total{result="error"}`), and is retried after
//! `JWKS_MIN_REFETCH`. Until a first set is fetched, JWTs are refused and
//! the process reports itself not ready ([`not_ready`]).

use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prometheus::{IntCounterVec, IntGauge, Opts};
use switchyard_config::{ClientTlsConfig, JWKS_MIN_REFETCH};
use switchyard_tls::{ClientTls, Connector};
use tokio::sync::Notify;

use super::jwt::Jwks;

/// A JWKS larger than this is refused (real ones are a few KiB).
const MAX_JWKS_BYTES: usize = 1 << 20;
/// Connect, handshake and answer of one fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

struct FetchMetrics {
    fetches: IntCounterVec,
    keys: IntGauge,
    last_success: IntGauge,
}

/// Registered once in the process-wide registry (the metrics listener serves it).
fn metrics() -> &'static FetchMetrics {
    static M: OnceLock<FetchMetrics> = OnceLock::new();
    M.get_or_init(|| {
        let fetches = IntCounterVec::new(
            Opts::new("switchyard_jwks_fetches_total", "JWKS fetches from auth.jwt.jwks_url, by result (ok, error)"),
            &["result"],
        )
        .expect("static metric");
        let keys = IntGauge::new("switchyard_jwks_keys", "Signing keys in the JWKS in force").expect("static metric");
        let last_success = IntGauge::new(
            "switchyard_jwks_last_success_timestamp_seconds",
            "Unix time of the last successful JWKS fetch (0: none yet)",
        )
        .expect("static metric");
        let r = prometheus::default_registry();
        for c in [
            Box::new(fetches.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(keys.clone()),
            Box::new(last_success.clone()),
        ] {
            if let Err(e) = r.register(c) {
                tracing::warn!(error = %e, "JWKS metrics not registered");
            }
        }
        FetchMetrics { fetches, keys, last_success }
    })
}

/// Why the process is not ready: no JWKS fetched yet from a URL (the last
/// error says why). `None` when every JWKS URL has been fetched once.
static PENDING: Mutex<Option<String>> = Mutex::new(None);

pub fn not_ready() -> Option<String> {
    PENDING.lock().map(|p| p.clone()).unwrap_or(None)
}

fn set_pending(why: Option<String>) {
    if let Ok(mut p) = PENDING.lock() {
        *p = why;
    }
}

/// The key set from a URL, kept fresh by its own thread.
pub struct RemoteJwks {
    url: String,
    current: ArcSwapOption<Jwks>,
    /// An unknown `kid` was seen: fetch again (rate-limited by the fetch loop).
    wake: Arc<Notify>,
}

type FetchClient = Client<Connector, Empty<Bytes>>;

impl RemoteJwks {
    /// Starts fetching (the first fetch at once); TLS files are read now, so
    /// a bad one fails start-up.
    pub fn start(url: &str, tls: &ClientTlsConfig, refresh: Duration) -> Result<Arc<RemoteJwks>, String> {
        let tls = if url.starts_with("https://") {
            Some(ClientTls::load(tls, &[b"http/1.1"], "auth.jwt.jwks_url")?)
        } else {
            None
        };
        let client: FetchClient = Client::builder(TokioExecutor::new()).build(Connector::new(Some(FETCH_TIMEOUT), tls));
        let uri: http::Uri = url.parse().map_err(|e| format!("auth.jwt.jwks_url `{url}`: {e}"))?;
        let wake = Arc::new(Notify::new());
        let me = Arc::new(RemoteJwks { url: url.to_string(), current: ArcSwapOption::empty(), wake: wake.clone() });
        metrics();
        set_pending(Some(format!("no JWKS fetched yet from {url}")));
        let weak = Arc::downgrade(&me);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("auth.jwt.jwks_url: cannot start the fetch runtime: {e}"))?;
        std::thread::Builder::new()
            .name("switchyard-jwks".into())
            .spawn(move || runtime.block_on(fetch_loop(weak, client, uri, refresh, wake)))
            .map_err(|e| format!("auth.jwt.jwks_url: cannot start the fetch thread: {e}"))?;
        Ok(me)
    }

    /// The key set in force; `None` until the first fetch succeeded.
    pub fn current(&self) -> Option<Arc<Jwks>> {
        self.current.load_full()
    }

    /// A token named a key the set does not hold: fetch again soon.
    pub fn unknown_key(&self) {
        self.wake.notify_one();
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

async fn fetch_loop(me: Weak<RemoteJwks>, client: FetchClient, uri: http::Uri, refresh: Duration, wake: Arc<Notify>) {
    let m = metrics();
    loop {
        let started = Instant::now();
        let wait = match tokio::time::timeout(FETCH_TIMEOUT, fetch(&client, &uri)).await {
            Ok(Ok((jwks, max_age))) => {
                let Some(me) = me.upgrade() else { return };
                m.fetches.with_label_values(&["ok"]).inc();
                m.keys.set(jwks.len() as i64);
                m.last_success.set(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64));
                if me.current.load().is_none() {
                    tracing::info!(url = %uri, keys = jwks.len(), "JWKS fetched");
                }
                me.current.store(Some(Arc::new(jwks)));
                set_pending(None);
                max_age.unwrap_or(refresh).clamp(JWKS_MIN_REFETCH, refresh)
            }
            failed => {
                let Some(me) = me.upgrade() else { return };
                let e = match failed {
                    Ok(Err(e)) => e,
                    _ => format!("no answer within {}s", FETCH_TIMEOUT.as_secs()),
                };
                m.fetches.with_label_values(&["error"]).inc();
                if me.current.load().is_some() {
                    tracing::warn!(url = %uri, error = %e, "JWKS not fetched; the last good key set stays in force");
                } else {
                    tracing::warn!(url = %uri, error = %e, "JWKS not fetched; JWTs are refused until it is");
                    set_pending(Some(format!("no JWKS fetched yet from {uri}: {e}")));
                }
                JWKS_MIN_REFETCH
            }
        };
        // Until the set expires, or earlier for an unknown `kid` — never
        // sooner than JWKS_MIN_REFETCH after the last fetch.
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = wake.notified() => {
                tokio::time::sleep_until((started + JWKS_MIN_REFETCH).into()).await;
            }
        }
        if me.strong_count() == 0 {
            return;
        }
    }
}

/// GET the URL: the parsed set and the answer's `max-age`, if any.
async fn fetch(client: &FetchClient, uri: &http::Uri) -> Result<(Jwks, Option<Duration>), String> {
    let mut req = http::Request::new(Empty::new());
    *req.uri_mut() = uri.clone();
    req.headers_mut().insert(http::header::ACCEPT, http::HeaderValue::from_static("application/json"));
    let resp = client.request(req).await.map_err(|e| switchyard_runtime::error::error_chain(&e))?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    let max_age = resp.headers().get(http::header::CACHE_CONTROL).and_then(|v| max_age(v.to_str().ok()?));
    let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES).collect().await.map_err(|e| e.to_string())?.to_bytes();
    let jwks = Jwks::parse(&body)?;
    Ok((jwks, max_age))
}

/// `max-age=N` of a `Cache-Control` value (`no-cache`/`no-store`: 0, i.e. the shortest period).
fn max_age(v: &str) -> Option<Duration> {
    v.split(',').map(str::trim).find_map(|d| {
        let d = d.to_ascii_lowercase();
        if d == "no-cache" || d == "no-store" {
            return Some(Duration::ZERO);
        }
        d.strip_prefix("max-age=")?.trim_matches('"').parse().ok().map(Duration::from_secs)
    })
}

#[cfg(test)]
mod tests {
    use super::max_age;
    use std::time::Duration;

    #[test]
    fn cache_control_max_age() {
        assert_eq!(max_age("public, max-age=600"), Some(Duration::from_secs(600)));
        assert_eq!(max_age("Max-Age=\"30\""), Some(Duration::from_secs(30)));
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=soon"), None);
    }
}
