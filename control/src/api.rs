//! The control API: its own listener (loopback by default), JSON, a bearer
//! token when configured, mutations on POST only. A request's path and
//! method parse into an [`ApiRoute`] (or a 404/405) before anything runs;
//! every mutation answers with the new `generation` and writes one audit log
//! line (who, what, when — never payloads). This is the one module that
//! turns control errors into HTTP statuses.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{json, Value};
use switchyard_stats::Snapshot;
use tokio::net::TcpListener;

use crate::error::{ControlError, ErrorKind};
use crate::experiments::{ExperimentResults, ExperimentStatus, Outcome};
use crate::plane::{ControlPlane, Published, StatsScope};
use crate::source::Source;
use crate::supervise::{self, API_TASK};

/// Largest control request body.
const MAX_BODY: usize = 1 << 20;
/// Environment variable whose value, when set, is the bearer token (wins over the config).
pub const TOKEN_ENV: &str = "SWITCHYARD_CONTROL_TOKEN";

/// Checks a control call's credentials the data plane's way (a JWT or API
/// key whose principal holds the `control` permission, and — when a model is
/// named — its `admin` permission on that model): the principal's name, or
/// why not. Supplied by the binary, so this crate stays free of the proxy.
pub type Verifier = Arc<dyn Fn(&http::HeaderMap, Option<&str>) -> Result<String, String> + Send + Sync>;

/// How control calls are authenticated: a static bearer token, the data plane's rules, both or neither.
#[derive(Clone, Default)]
pub struct ControlAuth {
    pub token: Option<String>,
    pub verifier: Option<Verifier>,
}

/// A control endpoint, parsed from a path and a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiRoute<'a> {
    /// `GET /config`
    Config,
    /// `POST /reload`
    Reload,
    /// `GET /ml/models/{model}/status`
    Status { model: &'a str },
    /// `GET /ml/models/{model}/versions`
    Versions { model: &'a str },
    /// `GET /ml/models/{model}/metrics`
    Metrics { model: &'a str },
    /// `GET /ml/models/{model}/drift`
    Drift { model: &'a str },
    /// `POST /ml/models/{model}/traffic`
    Traffic { model: &'a str },
    /// `POST /ml/models/{model}/rollback`
    Rollback { model: &'a str },
    /// `POST /ml/models/{model}/cache/invalidate`
    InvalidateCache { model: &'a str },
    /// `POST /ml/models/{model}/drift/reference`: capture a drift reference from live traffic, or reset it.
    DriftReference { model: &'a str },
    /// `POST /ml/ab-tests/create`
    CreateExperiment,
    /// `GET /ml/ab-tests/{test_id}/results`
    ExperimentResults { test_id: &'a str },
}

/// Why a request matches no route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// No endpoint has this path (404).
    NotFound,
    /// The path exists with another method (405 with `Allow`).
    MethodNotAllowed { allowed: Method },
}

impl<'a> ApiRoute<'a> {
    /// Parses a request path (a trailing `/` is ignored) and method.
    pub fn parse(method: &Method, path: &'a str) -> Result<ApiRoute<'a>, RouteError> {
        let segs: Vec<&'a str> = path.trim_end_matches('/').split('/').skip(1).collect();
        let route = match segs.as_slice() {
            ["config"] => ApiRoute::Config,
            ["reload"] => ApiRoute::Reload,
            ["ml", "models", model, "status"] => ApiRoute::Status { model },
            ["ml", "models", model, "versions"] => ApiRoute::Versions { model },
            ["ml", "models", model, "metrics"] => ApiRoute::Metrics { model },
            ["ml", "models", model, "drift"] => ApiRoute::Drift { model },
            ["ml", "models", model, "drift", "reference"] => ApiRoute::DriftReference { model },
            ["ml", "models", model, "traffic"] => ApiRoute::Traffic { model },
            ["ml", "models", model, "rollback"] => ApiRoute::Rollback { model },
            ["ml", "models", model, "cache", "invalidate"] => ApiRoute::InvalidateCache { model },
            ["ml", "ab-tests", "create"] => ApiRoute::CreateExperiment,
            ["ml", "ab-tests", test_id, "results"] => ApiRoute::ExperimentResults { test_id },
            _ => return Err(RouteError::NotFound),
        };
        let allowed = route.method();
        if *method == allowed {
            Ok(route)
        } else {
            Err(RouteError::MethodNotAllowed { allowed })
        }
    }

    /// The one method the endpoint answers.
    pub fn method(&self) -> Method {
        if self.is_mutation() {
            Method::POST
        } else {
            Method::GET
        }
    }

    /// Whether it changes state (POST, audited).
    pub fn is_mutation(&self) -> bool {
        match self {
            ApiRoute::Config
            | ApiRoute::Status { .. }
            | ApiRoute::Versions { .. }
            | ApiRoute::Metrics { .. }
            | ApiRoute::Drift { .. }
            | ApiRoute::ExperimentResults { .. } => false,
            ApiRoute::Reload
            | ApiRoute::Traffic { .. }
            | ApiRoute::Rollback { .. }
            | ApiRoute::InvalidateCache { .. }
            | ApiRoute::DriftReference { .. }
            | ApiRoute::CreateExperiment => true,
        }
    }
}

/// The HTTP status of a control error.
fn status_of(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::BadRequest => 400,
        ErrorKind::NotFound => 404,
        ErrorKind::Conflict => 409,
        ErrorKind::InvalidConfig => 422,
        ErrorKind::ServingPlane => 500,
        ErrorKind::Unavailable => 503,
    }
}

/// How long a client may take over its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Binds the control listener and serves it on the current tokio runtime,
/// over HTTPS when `tls` is given (`switchyard_tls::ServerTls`: the
/// certificate and client CA re-read from disk on change; with a client CA,
/// callers need a certificate too). Refuses to listen beyond loopback
/// without credentials: anyone who reaches the port could shift traffic, and
/// TLS (even mutual) says who connected, not that they may change routing.
pub async fn serve(
    plane: Arc<ControlPlane>,
    address: SocketAddr,
    auth: ControlAuth,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<SocketAddr, String> {
    if !address.ip().is_loopback() && auth.token.is_none() && auth.verifier.is_none() {
        return Err(format!(
            "the control API would listen on {address}, beyond loopback, with no credentials: set \
             listeners.control.token (or {TOKEN_ENV}), or auth: with a principal holding the `control` permission"
        ));
    }
    let listener = TcpListener::bind(address).await.map_err(|e| format!("control API cannot bind {address}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let auth = Arc::new(Guard { token: auth.token.map(Arc::from), verifier: auth.verifier });
    tracing::info!(
        address = %local,
        tls = tls.is_some(),
        token = auth.token.is_some(),
        jwt = auth.verifier.is_some(),
        "control API listening"
    );
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    supervise::spawn(API_TASK, async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "control API accept failed");
                    continue;
                }
            };
            let plane = plane.clone();
            let auth = auth.clone();
            let acceptor = acceptor.clone();
            supervise::spawn(API_TASK, async move {
                let svc = service_fn(move |req| handle(plane.clone(), auth.clone(), peer, req));
                let http = hyper::server::conn::http1::Builder::new();
                match acceptor {
                    None => drop(http.serve_connection(TokioIo::new(stream), svc).await),
                    Some(acceptor) => {
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => drop(http.serve_connection(TokioIo::new(tls), svc).await),
                            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "control API TLS handshake failed"),
                            Err(_) => tracing::debug!(%peer, "control API TLS handshake timed out"),
                        }
                    }
                }
            });
        }
    });
    Ok(local)
}

fn reply(status: u16, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(&body).expect("json"))))
        .expect("static parts")
}

fn error(e: ControlError) -> Response<Full<Bytes>> {
    reply(status_of(e.kind), json!({ "error": e.message }))
}

/// Constant-time comparison, so a token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn body<T: for<'de> Deserialize<'de>>(req: Request<Incoming>) -> Result<T, ControlError> {
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| ControlError::bad_request(format!("cannot read the body: {e}")))?
        .to_bytes();
    let bytes = if bytes.iter().all(|b| b.is_ascii_whitespace()) { Bytes::from_static(b"{}") } else { bytes };
    serde_json::from_slice(&bytes).map_err(|e| ControlError::bad_request(format!("invalid JSON body: {e}")))
}

struct Guard {
    token: Option<Arc<str>>,
    verifier: Option<Verifier>,
}

impl Guard {
    /// Who the call runs as: `token` (the static token), a principal, or
    /// `anonymous` when no credentials are configured (loopback only).
    fn principal(&self, req: &Request<Incoming>) -> Result<String, String> {
        if self.token.is_none() && self.verifier.is_none() {
            return Ok("anonymous".into());
        }
        let given = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if let (Some(t), Some(g)) = (&self.token, given) {
            if same(g.trim().as_bytes(), t.as_bytes()) {
                return Ok("token".into());
            }
        }
        match &self.verifier {
            Some(v) => v(req.headers(), None),
            None => Err("missing or wrong bearer token".into()),
        }
    }

    /// Whether the caller may administer `model` (a drift reference replaces
    /// what the model is judged against): the static token and an anonymous
    /// loopback caller may; a principal needs `model:{model}:admin` (or wider).
    fn admin(&self, req: &Request<Incoming>, principal: &str, model: &str) -> Result<(), String> {
        match (&self.verifier, principal) {
            (_, "token" | "anonymous") | (None, _) => Ok(()),
            (Some(v), _) => v(req.headers(), Some(model)).map(|_| ()),
        }
    }
}

async fn handle(
    plane: Arc<ControlPlane>,
    auth: Arc<Guard>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    // Authenticated by its HMAC signature: MLflow cannot send a bearer token.
    if req.uri().path().trim_end_matches('/') == crate::webhook::PATH {
        return Ok(crate::webhook::receive(req).await);
    }
    let principal = match auth.principal(&req) {
        Ok(p) => p,
        Err(why) => {
            // A refused attempt to change state is audited too.
            if req.method() == Method::POST {
                switchyard_stats::access_log::Line::new("audit")
                    .str("client", &peer.to_string())
                    .str("what", &format!("POST {}", req.uri().path()))
                    .num("status", 401)
                    .str("error", &why)
                    .write();
            }
            let mut r = reply(401, json!({ "error": why }));
            r.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
            return Ok(r);
        }
    };
    let who = format!("{principal}@{peer}");
    let method = req.method().clone();
    let path = req.uri().path().trim_end_matches('/').to_string();
    let route = match ApiRoute::parse(&method, &path) {
        Ok(r) => r,
        Err(RouteError::NotFound) => return Ok(error(ControlError::not_found(format!("no control endpoint {path}")))),
        Err(RouteError::MethodNotAllowed { allowed }) => {
            let mut r = reply(405, json!({ "error": format!("{method} is not allowed on {path} (use {allowed})") }));
            r.headers_mut().insert(http::header::ALLOW, http::HeaderValue::from_str(allowed.as_str()).expect("method"));
            return Ok(r);
        }
    };
    if let ApiRoute::DriftReference { model } = route {
        if let Err(why) = auth.admin(&req, &principal, model) {
            switchyard_stats::access_log::Line::new("audit")
                .str("principal", &principal)
                .str("client", &peer.to_string())
                .str("what", &format!("{method} {path}"))
                .num("status", 403)
                .str("error", &why)
                .write();
            return Ok(reply(403, json!({ "error": why })));
        }
    }
    let expect = match if_match(&req, route) {
        Ok(e) => e,
        Err(e) => return Ok(error(e)),
    };
    let result = dispatch(&plane, route, req, &who, expect).await;
    if route.is_mutation() {
        let outcome = match &result {
            Ok(v) => format!("ok generation={}", v["generation"]),
            Err(e) => format!("refused {}: {}", status_of(e.kind), e.message),
        };
        let what = format!("{method} {path}");
        tracing::info!(target: "audit", who, what, outcome, "control call");
        // The same line in the access log, beside the data plane's requests.
        let (status, generation) = match &result {
            Ok(v) => (200, v["generation"].as_u64()),
            Err(e) => (status_of(e.kind), None),
        };
        let line = switchyard_stats::access_log::Line::new("audit")
            .str("principal", &principal)
            .str("client", &peer.to_string())
            .str("what", &what)
            .num("status", status);
        let line = match (generation, &result) {
            (Some(g), _) => line.num("generation", g),
            (None, Err(e)) => line.str("error", &e.message),
            (None, Ok(_)) => line,
        };
        line.write();
    }
    Ok(match result {
        Ok(v) => reply(200, v),
        Err(e) => error(e),
    })
}

/// `If-Match: N` (or `"N"`): a routing change applies only if the live
/// generation (the shared one in fleet mode) is still N. Refused where it
/// cannot be honoured (reads, reloads, cache drops), never ignored.
fn if_match(req: &Request<Incoming>, route: ApiRoute<'_>) -> Result<Option<u64>, ControlError> {
    let Some(v) = req.headers().get(http::header::IF_MATCH) else { return Ok(None) };
    if !matches!(route, ApiRoute::Traffic { .. } | ApiRoute::Rollback { .. } | ApiRoute::CreateExperiment) {
        return Err(ControlError::bad_request(
            "If-Match applies to traffic changes, rollbacks and A/B test creation only",
        ));
    }
    v.to_str()
        .ok()
        .map(|s| s.trim().trim_matches('"'))
        .and_then(|s| s.parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| ControlError::bad_request("If-Match must be a generation number, e.g. If-Match: 7"))
}

async fn dispatch(
    plane: &Arc<ControlPlane>,
    route: ApiRoute<'_>,
    req: Request<Incoming>,
    who: &str,
    expect: Option<u64>,
) -> Result<Value, ControlError> {
    match route {
        ApiRoute::Config => Ok(config(plane)),
        ApiRoute::Reload => {
            plane.reload_file(&format!("POST /reload by {who}")).await.map(|g| json!({ "generation": g }))
        }
        ApiRoute::Status { model } => status(plane, model).await,
        ApiRoute::Versions { model } => versions(plane, model).await,
        ApiRoute::Metrics { model } => metrics(plane, model).await,
        ApiRoute::Drift { model } => crate::monitoring::drift(plane, model),
        ApiRoute::Traffic { model } => traffic(plane, model, body(req).await?, who, expect).await,
        ApiRoute::Rollback { model } => rollback(plane, model, body(req).await?, who, expect).await,
        ApiRoute::InvalidateCache { model } => invalidate(plane, model),
        ApiRoute::DriftReference { model } => crate::reference::reference(plane, model, body(req).await?, who).await,
        ApiRoute::CreateExperiment => {
            let created = plane.create_experiment_if(body(req).await?, who, expect).await?;
            Ok(serde_json::to_value(created).expect("json"))
        }
        ApiRoute::ExperimentResults { test_id } => Ok(results_json(&plane.experiment_results(test_id).await?)),
    }
}

/// One model's routing state, read from one published snapshot (never mixed with a newer one).
fn model_json(p: &Published, model: &str) -> Result<Value, ControlError> {
    let m = p.effective.models.get(model).ok_or_else(|| ControlError::not_found(format!("unknown model '{model}'")))?;
    let src = p.sources.get(model);
    Ok(json!({
        "sticky_header": m.sticky_header,
        "variants": m.variants.iter().map(|v| json!({
            "name": v.name.as_ref(),
            "backend": v.backend.as_ref(),
            "model": v.model.as_deref(),
            "version": v.version.as_deref(),
            "weight": v.weight,
            "source": src.and_then(|s| s.get(v.name.as_ref())).map_or("file", |s| s.label()),
            "batching": v.batching.is_some(),
            "shadow_percent": v.shadow_percent,
        })).collect::<Vec<_>>(),
        "rollout": m.rollout.is_some(),
    }))
}

fn config(plane: &ControlPlane) -> Value {
    let p = plane.published();
    let models: BTreeMap<&str, Value> =
        p.effective.models.keys().map(|m| (m.as_ref(), model_json(&p, m).unwrap_or(Value::Null))).collect();
    let backends: BTreeMap<&str, &str> = p.effective.backends.iter().map(|(k, b)| (k.as_ref(), b.kind())).collect();
    let mut out = json!({
        "generation": p.generation,
        "config_file": plane.config_path().display().to_string(),
        "last_reload": p.last_reload,
        "listeners": {
            "http": p.effective.listeners.http.address.to_string(),
            "metrics": p.effective.listeners.metrics.map(|a| a.to_string()),
            "grpc": p.effective.listeners.grpc.as_ref().map(|g| g.address.to_string()),
            "control": p.effective.listeners.control.as_ref().map(|c| c.address.to_string()),
        },
        "backends": backends,
        "models": models,
    });
    if let Some(g) = p.fleet_generation {
        out["fleet_generation"] = json!(g);
        out["fleet"] = fleet_json(plane);
    }
    out
}

/// Fleet mode's state: the same object `/ready` carries.
fn fleet_json(plane: &ControlPlane) -> Value {
    plane.fleet().map_or(Value::Null, |_| {
        switchyard_stats::fleet::detail().and_then(|d| serde_json::from_str(&d).ok()).unwrap_or(Value::Null)
    })
}

async fn status(plane: &ControlPlane, model: &str) -> Result<Value, ControlError> {
    // The rollout first: it waits for any step in progress, so the weights read
    // next are the ones that step published.
    let rollout = plane.rollout_status(model).await;
    let p = plane.published();
    let mut m = model_json(&p, model)?;
    let variants = m["variants"].as_array_mut().expect("built above");
    for v in variants.iter_mut() {
        let name = v["name"].as_str().unwrap_or_default().to_string();
        v["ready"] = Value::Bool(plane.serving().variant_ready(model, &name).await);
    }
    let mut out = json!({
        "model": model,
        "generation": p.generation,
        "variants": m["variants"],
        "rollout": rollout,
        "last_reload": p.last_reload,
    });
    if let Some(g) = p.fleet_generation {
        out["fleet_generation"] = json!(g);
    }
    Ok(out)
}

async fn versions(plane: &ControlPlane, model: &str) -> Result<Value, ControlError> {
    let p = plane.published();
    let m = p.effective.models.get(model).ok_or_else(|| ControlError::not_found(format!("unknown model '{model}'")))?;
    let mut per_variant = BTreeMap::new();
    let mut known = std::collections::BTreeSet::new();
    for v in &m.variants {
        let vs = plane.serving().model_versions(model, &v.name).await;
        known.extend(vs.iter().cloned());
        per_variant.insert(v.name.to_string(), json!({ "serves": v.version.as_deref(), "backend_versions": vs }));
    }
    Ok(json!({
        "model": model,
        "generation": p.generation,
        "known_versions": known,
        "variants": per_variant,
        "history": plane.history(model).await,
    }))
}

fn latency_json(s: &Snapshot) -> Value {
    json!({ "mean": s.mean_latency_ms(), "p50": s.quantile_ms(0.5), "p95": s.quantile_ms(0.95), "p99": s.quantile_ms(0.99) })
}

fn shadow_json(s: &Snapshot) -> Value {
    json!({
        "mirrored": s.shadow.mirrored, "failed": s.shadow.failed, "dropped": s.shadow.dropped,
        "argmax_agreement": s.shadow.agreement(), "max_abs_error": s.shadow.max_abs_error,
    })
}

async fn metrics(plane: &ControlPlane, model: &str) -> Result<Value, ControlError> {
    let p = plane.published();
    let m = p.effective.models.get(model).ok_or_else(|| ControlError::not_found(format!("unknown model '{model}'")))?;
    let names: Vec<String> = m.variants.iter().map(|v| v.name.to_string()).collect();
    let (scope, stats) = plane.variant_stats(model, &names).await;
    let variants: Vec<Value> = m
        .variants
        .iter()
        .zip(stats)
        .map(|(v, s)| {
            json!({
                "name": v.name.as_ref(),
                "requests": s.requests,
                "errors": s.errors,
                "error_rate": s.error_rate(),
                "latency_ms": latency_json(&s),
                "shadow": (s.shadow.mirrored + s.shadow.dropped > 0).then(|| shadow_json(&s)),
                "data_drift_score": s.data_drift,
                "model_drift_score": s.model_drift,
                // The seed ticket's ModelMetrics (ASTR-90).
                "prediction_latency": s.mean_latency_ms(),
                "throughput": s.throughput(),
                "accuracy": s.quality.as_ref().and_then(|q| q.classification.as_ref()).map(|c| c.accuracy),
                "precision": s.quality.as_ref().and_then(|q| q.classification.as_ref()).map(|c| c.precision),
                "recall": s.quality.as_ref().and_then(|q| q.classification.as_ref()).map(|c| c.recall),
                "f1_score": s.quality.as_ref().and_then(|q| q.classification.as_ref()).map(|c| c.f1),
                "quality": s.quality.as_ref().map(crate::monitoring::quality_json),
            })
        })
        .collect();
    let since = match scope {
        StatsScope::Replica => "process start",
        StatsScope::Fleet => "fleet counters (every replica, kept 7 days after the last request)",
    };
    let mut out = json!({ "model": model, "generation": p.generation, "since": since, "variants": variants });
    if let Some(g) = p.fleet_generation {
        // Fleet mode: whose numbers these are (this replica's own while Redis is unreachable).
        out["fleet_generation"] = json!(g);
        out["scope"] = json!(scope);
    }
    Ok(out)
}

fn results_json(r: &ExperimentResults) -> Value {
    let d = &r.def;
    let variants: Vec<Value> = r
        .arms
        .iter()
        .map(|a| {
            let s = &a.stats;
            let mut o = json!({
                "name": a.name,
                "weight": a.weight,
                "requests": s.requests,
                "errors": s.errors,
                "error_rate": s.error_rate(),
                "latency_ms": latency_json(s),
            });
            if s.shadow.mirrored > 0 || s.shadow.dropped > 0 {
                o["shadow"] = shadow_json(s);
            }
            o
        })
        .collect();
    let comparisons: Vec<Value> = r
        .comparisons
        .iter()
        .map(|c| match &c.outcome {
            Outcome::InsufficientData { need, control_requests, treatment_requests } => json!({
                "control": c.control, "treatment": c.treatment,
                "verdict": c.outcome.verdict().name(),
                "detail": format!("needs {need} requests per variant; has {control_requests} and {treatment_requests}"),
            }),
            Outcome::Tested { test, statistic, p_value, significant, winner } => json!({
                "control": c.control, "treatment": c.treatment, "test": test.name(), "statistic": statistic,
                "p_value": p_value, "significant": significant, "winner": winner,
                "verdict": c.outcome.verdict().name(),
            }),
        })
        .collect();
    json!({
        "test_id": d.test_id,
        "model": d.model,
        "status": match r.status { ExperimentStatus::Running => "running", ExperimentStatus::Completed => "completed" },
        "started_at": d.started_at,
        "ends_at": d.ends_at(),
        "success_metric": d.success_metric,
        "confidence_level": d.confidence_level,
        "minimum_sample_size": d.minimum_sample_size,
        "variants": variants,
        "comparisons": comparisons,
        "verdict": r.verdict.name(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrafficBody {
    #[serde(default)]
    weights: Option<BTreeMap<String, f64>>,
    /// Drop API weights: the file's apply again.
    #[serde(default)]
    reset: bool,
}

fn weights_now(plane: &ControlPlane, model: &str) -> Value {
    let p = plane.published();
    let w: BTreeMap<&str, f64> = p
        .effective
        .models
        .get(model)
        .map(|m| m.variants.iter().map(|v| (v.name.as_ref(), v.weight)).collect())
        .unwrap_or_default();
    json!(w)
}

/// A mutation's answer: the model, the generation, the weights now, and the shared generation in fleet mode.
fn changed(plane: &ControlPlane, model: &str, generation: u64) -> Value {
    let mut v = json!({ "model": model, "generation": generation, "weights": weights_now(plane, model) });
    if let Some(g) = plane.published().fleet_generation {
        v["fleet_generation"] = json!(g);
    }
    v
}

async fn traffic(
    plane: &ControlPlane,
    model: &str,
    b: TrafficBody,
    who: &str,
    expect: Option<u64>,
) -> Result<Value, ControlError> {
    let generation = match (b.weights, b.reset) {
        (Some(w), false) => plane.set_weights_if(model, w, Source::Api, who, expect).await?,
        (None, true) => plane.reset_weights_if(model, who, expect).await?,
        _ => {
            return Err(ControlError::bad_request("give either {\"weights\": {variant: weight}} or {\"reset\": true}"))
        }
    };
    Ok(changed(plane, model, generation))
}

fn invalidate(plane: &ControlPlane, model: &str) -> Result<Value, ControlError> {
    let p = plane.published();
    if !p.effective.models.contains_key(model) {
        return Err(ControlError::not_found(format!("unknown model '{model}'")));
    }
    let n = plane
        .serving()
        .invalidate_cache(model)
        .ok_or_else(|| ControlError::conflict("no response cache is configured"))?;
    Ok(json!({ "model": model, "generation": p.generation, "invalidated_variants": n }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    #[serde(default)]
    generation: Option<u64>,
}

async fn rollback(
    plane: &ControlPlane,
    model: &str,
    b: RollbackBody,
    who: &str,
    expect: Option<u64>,
) -> Result<Value, ControlError> {
    let (generation, _) = plane.rollback_if(model, b.generation, who, expect).await?;
    Ok(changed(plane, model, generation))
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;

    #[test]
    fn token_comparison() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
    }

    #[test]
    fn status_code_of_reply() {
        assert_eq!(reply(201, json!({})).status(), StatusCode::CREATED);
    }

    #[test]
    fn routes_by_path_and_method() {
        use ApiRoute as R;
        let not_allowed = |m: Method| Err(RouteError::MethodNotAllowed { allowed: m });
        let cases: Vec<(Method, &str, Result<ApiRoute, RouteError>)> = vec![
            (Method::GET, "/config", Ok(R::Config)),
            (Method::GET, "/config/", Ok(R::Config)),
            (Method::POST, "/config", not_allowed(Method::GET)),
            (Method::POST, "/reload", Ok(R::Reload)),
            (Method::GET, "/reload", not_allowed(Method::POST)),
            (Method::GET, "/ml/models/mlp/status", Ok(R::Status { model: "mlp" })),
            (Method::POST, "/ml/models/mlp/status", not_allowed(Method::GET)),
            (Method::GET, "/ml/models/mlp/versions", Ok(R::Versions { model: "mlp" })),
            (Method::GET, "/ml/models/mlp/metrics", Ok(R::Metrics { model: "mlp" })),
            (Method::POST, "/ml/models/mlp/traffic", Ok(R::Traffic { model: "mlp" })),
            (Method::GET, "/ml/models/mlp/traffic", not_allowed(Method::POST)),
            (Method::PUT, "/ml/models/mlp/traffic", not_allowed(Method::POST)),
            (Method::POST, "/ml/models/mlp/rollback", Ok(R::Rollback { model: "mlp" })),
            (Method::DELETE, "/ml/models/mlp/rollback", not_allowed(Method::POST)),
            (Method::POST, "/ml/models/mlp/cache/invalidate", Ok(R::InvalidateCache { model: "mlp" })),
            (Method::GET, "/ml/models/mlp/cache/invalidate", not_allowed(Method::POST)),
            (Method::POST, "/ml/ab-tests/create", Ok(R::CreateExperiment)),
            (Method::GET, "/ml/ab-tests/create", not_allowed(Method::POST)),
            (Method::GET, "/ml/ab-tests/t1/results", Ok(R::ExperimentResults { test_id: "t1" })),
            (Method::POST, "/ml/models/mlp/drift/reference", Ok(R::DriftReference { model: "mlp" })),
            (Method::GET, "/ml/models/mlp/drift/reference", not_allowed(Method::POST)),
            (Method::POST, "/ml/ab-tests/t1/results", not_allowed(Method::GET)),
            (Method::GET, "/", Err(RouteError::NotFound)),
            (Method::GET, "", Err(RouteError::NotFound)),
            (Method::GET, "/ml/models/mlp", Err(RouteError::NotFound)),
            (Method::GET, "/ml/models/mlp/nothing", Err(RouteError::NotFound)),
            (Method::GET, "/ml/models/mlp/status/extra", Err(RouteError::NotFound)),
            (Method::POST, "/ml/models/mlp/cache", Err(RouteError::NotFound)),
            (Method::GET, "/ml/ab-tests/t1", Err(RouteError::NotFound)),
            (Method::GET, "/v2/models/mlp", Err(RouteError::NotFound)),
        ];
        for (method, path, want) in cases {
            assert_eq!(ApiRoute::parse(&method, path), want, "{method} {path}");
        }
    }

    #[test]
    fn mutations_are_exactly_the_post_routes() {
        for r in [ApiRoute::Reload, ApiRoute::Traffic { model: "m" }, ApiRoute::CreateExperiment] {
            assert!(r.is_mutation() && r.method() == Method::POST, "{r:?}");
        }
        for r in [ApiRoute::Config, ApiRoute::Status { model: "m" }, ApiRoute::ExperimentResults { test_id: "t" }] {
            assert!(!r.is_mutation() && r.method() == Method::GET, "{r:?}");
        }
    }

    #[test]
    fn every_error_kind_has_its_status() {
        for (kind, code) in [
            (ErrorKind::BadRequest, 400),
            (ErrorKind::NotFound, 404),
            (ErrorKind::Conflict, 409),
            (ErrorKind::InvalidConfig, 422),
            (ErrorKind::ServingPlane, 500),
            (ErrorKind::Unavailable, 503),
        ] {
            assert_eq!(error(ControlError::new(kind, "x")).status().as_u16(), code);
        }
    }
}
