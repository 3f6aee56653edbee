//! The control API: its own listener (loopback by default), JSON, a bearer
//! token when configured, mutations on POST only. Every mutation answers with
//! the new `generation` and writes one audit log line (who, what, when — never
//! payloads).

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
use tokio::net::TcpListener;

use crate::state::Source;
use crate::{ControlError, ControlPlane};

/// Largest control request body.
const MAX_BODY: usize = 1 << 20;
/// Environment variable whose value, when set, is the bearer token (wins over the config).
pub const TOKEN_ENV: &str = "SWITCHYARD_CONTROL_TOKEN";

/// Binds the control listener and serves it on the current tokio runtime.
pub async fn serve(plane: Arc<ControlPlane>, address: SocketAddr, token: Option<String>) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind(address).await.map_err(|e| format!("control API cannot bind {address}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let token: Option<Arc<str>> = token.map(Arc::from);
    tracing::info!(address = %local, auth = token.is_some(), "control API listening");
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "control API accept failed");
                    continue;
                }
            };
            let plane = plane.clone();
            let token = token.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(plane.clone(), token.clone(), peer, req));
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
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
    reply(e.status, json!({ "error": e.message }))
}

/// Constant-time comparison, so a token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn body<T: for<'de> Deserialize<'de>>(req: Request<Incoming>) -> Result<T, ControlError> {
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| ControlError::new(400, format!("cannot read the body: {e}")))?
        .to_bytes();
    let bytes = if bytes.iter().all(|b| b.is_ascii_whitespace()) { Bytes::from_static(b"{}") } else { bytes };
    serde_json::from_slice(&bytes).map_err(|e| ControlError::new(400, format!("invalid JSON body: {e}")))
}

async fn handle(
    plane: Arc<ControlPlane>,
    token: Option<Arc<str>>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if let Some(t) = &token {
        let given = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| same(g.trim().as_bytes(), t.as_bytes())) {
            let mut r = reply(401, json!({"error": "missing or wrong bearer token"}));
            r.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
            return Ok(r);
        }
    }
    let who = format!("{peer}");
    let path = req.uri().path().trim_end_matches('/').to_string();
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let method = req.method().clone();
    // (allowed method, handler id)
    let route = match segs.as_slice() {
        ["config"] => Some((Method::GET, 0)),
        ["reload"] => Some((Method::POST, 1)),
        ["ml", "models", _, "status"] => Some((Method::GET, 2)),
        ["ml", "models", _, "versions"] => Some((Method::GET, 3)),
        ["ml", "models", _, "metrics"] => Some((Method::GET, 4)),
        ["ml", "models", _, "traffic"] => Some((Method::POST, 5)),
        ["ml", "models", _, "rollback"] => Some((Method::POST, 6)),
        ["ml", "ab-tests", "create"] => Some((Method::POST, 7)),
        ["ml", "ab-tests", _, "results"] => Some((Method::GET, 8)),
        ["ml", "models", _, "cache", "invalidate"] => Some((Method::POST, 9)),
        _ => None,
    };
    let Some((allowed, id)) = route else {
        return Ok(error(ControlError::new(404, format!("no control endpoint {path}"))));
    };
    if method != allowed {
        let mut r = error(ControlError::new(405, format!("{method} is not allowed on {path} (use {allowed})")));
        r.headers_mut().insert(http::header::ALLOW, http::HeaderValue::from_str(allowed.as_str()).expect("method"));
        return Ok(r);
    }
    let model = segs.get(2).copied().unwrap_or_default().to_string();
    let result = match id {
        0 => Ok(config(&plane)),
        1 => plane.reload_file(&format!("POST /reload by {who}")).await.map(|g| json!({ "generation": g })),
        2 => status(&plane, &model).await,
        3 => versions(&plane, &model).await,
        4 => metrics(&plane, &model),
        5 => traffic(&plane, &model, req, &who).await,
        6 => rollback(&plane, &model, req, &who).await,
        7 => match body(req).await {
            Ok(r) => plane.create_experiment(r, &who).await,
            Err(e) => Err(e),
        },
        8 => plane.experiment_results(segs[2]).await,
        _ => invalidate(&plane, &model),
    };
    if matches!(id, 1 | 5 | 6 | 7 | 9) {
        let outcome = match &result {
            Ok(v) => format!("ok generation={}", v["generation"]),
            Err(e) => format!("refused {}: {}", e.status, e.message),
        };
        tracing::info!(target: "audit", who, what = %format!("{method} {path}"), outcome, "control call");
    }
    Ok(match result {
        Ok(v) => reply(200, v),
        Err(e) => error(e),
    })
}

/// One model's routing state, read from one published snapshot (never mixed with a newer one).
fn model_json(p: &crate::Published, model: &str) -> Result<Value, ControlError> {
    let m = p.effective.models.get(model).ok_or_else(|| ControlError::new(404, format!("unknown model '{model}'")))?;
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
    json!({
        "generation": p.generation,
        "config_file": plane.config_path().display().to_string(),
        "last_reload": p.last_reload,
        "listeners": {
            "http": p.effective.listeners.http.address.to_string(),
            "metrics": p.effective.listeners.metrics.map(|a| a.to_string()),
            "control": p.effective.listeners.control.as_ref().map(|c| c.address.to_string()),
        },
        "backends": backends,
        "models": models,
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
        v["ready"] = Value::Bool(plane.data().variant_ready(model, &name).await);
    }
    Ok(json!({
        "model": model,
        "generation": p.generation,
        "variants": m["variants"],
        "rollout": rollout,
        "last_reload": p.last_reload,
    }))
}

async fn versions(plane: &ControlPlane, model: &str) -> Result<Value, ControlError> {
    let p = plane.published();
    let m = p.effective.models.get(model).ok_or_else(|| ControlError::new(404, format!("unknown model '{model}'")))?;
    let mut per_variant = BTreeMap::new();
    let mut known = std::collections::BTreeSet::new();
    for v in &m.variants {
        let vs = plane.data().model_versions(model, &v.name).await;
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

fn metrics(plane: &ControlPlane, model: &str) -> Result<Value, ControlError> {
    let p = plane.published();
    let m = p.effective.models.get(model).ok_or_else(|| ControlError::new(404, format!("unknown model '{model}'")))?;
    let variants: Vec<Value> = m
        .variants
        .iter()
        .map(|v| {
            let s = plane.data().stats(model, &v.name).unwrap_or_default();
            json!({
                "name": v.name.as_ref(),
                "requests": s.requests,
                "errors": s.errors,
                "error_rate": s.error_rate(),
                "latency_ms": { "mean": s.mean_latency_ms(), "p50": s.quantile_ms(0.5), "p95": s.quantile_ms(0.95), "p99": s.quantile_ms(0.99) },
                "shadow": (s.shadow.mirrored + s.shadow.dropped > 0).then(|| json!({
                    "mirrored": s.shadow.mirrored, "failed": s.shadow.failed, "dropped": s.shadow.dropped,
                    "argmax_agreement": s.shadow.agreement(), "max_abs_error": s.shadow.max_abs_error,
                })),
            })
        })
        .collect();
    Ok(json!({ "model": model, "generation": p.generation, "since": "process start", "variants": variants }))
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

async fn traffic(plane: &ControlPlane, model: &str, req: Request<Incoming>, who: &str) -> Result<Value, ControlError> {
    let b: TrafficBody = body(req).await?;
    let generation = match (b.weights, b.reset) {
        (Some(w), false) => plane.set_weights(model, w, Source::Api, who).await?,
        (None, true) => plane.reset_weights(model, who).await?,
        _ => return Err(ControlError::new(400, "give either {\"weights\": {variant: weight}} or {\"reset\": true}")),
    };
    plane.abort_rollout(model, &format!("manual traffic change by {who}")).await;
    Ok(json!({ "model": model, "generation": generation, "weights": weights_now(plane, model) }))
}

fn invalidate(plane: &ControlPlane, model: &str) -> Result<Value, ControlError> {
    let p = plane.published();
    if !p.effective.models.contains_key(model) {
        return Err(ControlError::new(404, format!("unknown model '{model}'")));
    }
    let n = plane
        .data()
        .invalidate_cache(model)
        .ok_or_else(|| ControlError::new(409, "no response cache is configured"))?;
    Ok(json!({ "model": model, "generation": p.generation, "invalidated_variants": n }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    #[serde(default)]
    generation: Option<u64>,
}

async fn rollback(plane: &ControlPlane, model: &str, req: Request<Incoming>, who: &str) -> Result<Value, ControlError> {
    let b: RollbackBody = body(req).await?;
    let (generation, _) = plane.rollback(model, b.generation, who).await?;
    Ok(json!({ "model": model, "generation": generation, "weights": weights_now(plane, model) }))
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
}
