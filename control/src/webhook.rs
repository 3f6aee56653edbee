//! The MLflow model-registry webhook receiver (`POST /sources/mlflow/webhook`
//! on the control listener): a signed registry event for a model an onnx
//! backend sources from MLflow wakes that backend's poller at once.
//!
//! MLflow (`mlflow/webhooks/delivery.py`) follows Standard Webhooks: headers
//! `X-MLflow-Delivery-Id`, `X-MLflow-Timestamp` (Unix seconds) and
//! `X-MLflow-Signature: v1,BASE64(HMAC-SHA256(secret, "{id}.{timestamp}.{body}"))`;
//! the body is `{"entity", "action", "timestamp", "data": {"name", …}}`. The
//! signature, not the control API's bearer token (MLflow cannot send one),
//! authenticates a delivery: it must verify against the `webhook_secret` of
//! some source, and only sources whose secret verified it are woken.

use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use prometheus::{register_int_counter_vec, IntCounterVec};
use serde_json::{json, Value};

/// The receiver's path on the control listener.
pub const PATH: &str = "/sources/mlflow/webhook";

/// A delivery signed further than this from now is refused (a replay).
const TOLERANCE_SECS: u64 = 300;

/// Registry events are small; anything larger is not one.
const MAX_BODY: usize = 256 << 10;

static DELIVERIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchyard_mlflow_webhook_deliveries_total",
        "MLflow webhook deliveries by result: accepted (a source synced), ignored (no source serves the model), \
         unauthorized (bad, missing or stale signature), malformed",
        &["result"]
    )
    .expect("registered once")
});

fn answer(status: u16, result: &str, body: Value) -> Response<Full<Bytes>> {
    DELIVERIES.with_label_values(&[result]).inc();
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static parts")
}

/// Answers one delivery: 401 when no source's secret verifies it, 400 when
/// it is not a registry event, 202 when a source syncs, 200 when ignored.
pub async fn receive(req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != http::Method::POST {
        let mut r = answer(
            405,
            "malformed",
            json!({ "error": format!("{} is not allowed on {PATH} (use POST)", req.method()) }),
        );
        r.headers_mut().insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
        return r;
    }
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (id, ts, sig) = (header("x-mlflow-delivery-id"), header("x-mlflow-timestamp"), header("x-mlflow-signature"));
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return answer(400, "malformed", json!({ "error": format!("cannot read the body: {e}") })),
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let secrets: Vec<_> = switchyard_stats::sources::webhook_targets();
    let verified = match verify(id.as_deref(), ts.as_deref(), sig.as_deref(), &body, now, &secrets) {
        Ok(v) => v,
        Err(why) => {
            tracing::warn!("MLflow webhook delivery refused: {why}");
            return answer(401, "unauthorized", json!({ "error": why }));
        }
    };
    let event: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return answer(400, "malformed", json!({ "error": format!("the body is not JSON: {e}") })),
    };
    let (Some(entity), Some(action)) = (event["entity"].as_str(), event["action"].as_str()) else {
        return answer(
            400,
            "malformed",
            json!({ "error": "not an MLflow webhook event: `entity` and `action` are required" }),
        );
    };
    let Some(name) = event["data"]["name"].as_str() else {
        return answer(400, "malformed", json!({ "error": format!("{entity}.{action}: `data.name` is required") }));
    };
    // Prompts live in the registry too; none is a model a backend serves.
    let woken: Vec<&str> = if entity.starts_with("prompt") {
        Vec::new()
    } else {
        verified
            .iter()
            .filter(|t| t.model == name)
            .map(|t| {
                (t.wake)();
                t.backend.as_str()
            })
            .collect()
    };
    if woken.is_empty() {
        return answer(200, "ignored", json!({ "event": format!("{entity}.{action}"), "model": name, "synced": [] }));
    }
    tracing::info!(event = %format!("{entity}.{action}"), model = name, backends = ?woken, delivery = id.as_deref().unwrap_or(""),
        "MLflow webhook: syncing the model source now");
    answer(202, "accepted", json!({ "event": format!("{entity}.{action}"), "model": name, "synced": woken }))
}

/// The targets whose secret signed this delivery; why none did otherwise.
fn verify<'t>(
    id: Option<&str>,
    ts: Option<&str>,
    sig: Option<&str>,
    body: &[u8],
    now: u64,
    targets: &'t [switchyard_stats::sources::WebhookTarget],
) -> Result<Vec<&'t switchyard_stats::sources::WebhookTarget>, String> {
    if targets.is_empty() {
        return Err("no model source takes webhooks (set backends.NAME.mlflow.webhook_secret)".into());
    }
    let (Some(id), Some(ts), Some(sig)) = (id, ts, sig) else {
        return Err(
            "unsigned delivery: X-MLflow-Delivery-Id, X-MLflow-Timestamp and X-MLflow-Signature are required".into()
        );
    };
    let at: u64 = ts.trim().parse().map_err(|_| format!("X-MLflow-Timestamp {ts:?} is not Unix seconds"))?;
    if at.abs_diff(now) > TOLERANCE_SECS {
        return Err(format!("stale delivery: signed at {at}, now {now} (tolerance {TOLERANCE_SECS}s)"));
    }
    // Standard Webhooks: space-separated `v1,SIG` entries (several while a secret rotates).
    let sigs: Vec<Vec<u8>> = sig
        .split_whitespace()
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .collect();
    if sigs.is_empty() {
        return Err("X-MLflow-Signature has no v1 signature".into());
    }
    let mut signed = Vec::with_capacity(id.len() + ts.len() + body.len() + 2);
    signed.extend_from_slice(format!("{id}.{ts}.").as_bytes());
    signed.extend_from_slice(body);
    let ok: Vec<_> = targets
        .iter()
        .filter(|t| {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &t.secret);
            // ring's verify compares in constant time.
            sigs.iter().any(|s| ring::hmac::verify(&key, &signed, s).is_ok())
        })
        .collect();
    if ok.is_empty() {
        return Err("the signature does not verify with any configured webhook secret".into());
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn target(secret: &str) -> switchyard_stats::sources::WebhookTarget {
        switchyard_stats::sources::WebhookTarget {
            backend: "b".into(),
            model: "m".into(),
            secret: Arc::from(secret.as_bytes()),
            wake: Arc::new(|| {}),
        }
    }

    fn sign(secret: &str, id: &str, ts: &str, body: &str) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        let tag = ring::hmac::sign(&key, format!("{id}.{ts}.{body}").as_bytes());
        format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(tag.as_ref()))
    }

    #[test]
    fn signatures() {
        let t = [target("s3cret"), target("other")];
        let body = r#"{"entity":"model_version_alias","action":"created","data":{"name":"m"}}"#;
        let sig = sign("s3cret", "d1", "1000", body);
        let ok = verify(Some("d1"), Some("1000"), Some(&sig), body.as_bytes(), 1010, &t).unwrap();
        assert_eq!(ok.len(), 1);
        assert_eq!(&*ok[0].secret, b"s3cret");
        // Another body, id or secret; stale; unsigned; no targets.
        assert!(verify(Some("d1"), Some("1000"), Some(&sig), b"{}", 1010, &t).is_err());
        assert!(verify(Some("d2"), Some("1000"), Some(&sig), body.as_bytes(), 1010, &t).is_err());
        let stale = verify(Some("d1"), Some("1000"), Some(&sig), body.as_bytes(), 1000 + TOLERANCE_SECS + 1, &t);
        assert!(matches!(stale, Err(e) if e.contains("stale")));
        assert!(verify(Some("d1"), Some("1000"), None, body.as_bytes(), 1010, &t).is_err());
        assert!(verify(Some("d1"), Some("1000"), Some(&sig), body.as_bytes(), 1010, &[]).is_err());
        let wrong = sign("nope", "d1", "1000", body);
        assert!(verify(Some("d1"), Some("1000"), Some(&wrong), body.as_bytes(), 1010, &t).is_err());
        // Rotation: several signatures, one good.
        let both = format!("{wrong} {sig}");
        assert_eq!(verify(Some("d1"), Some("1000"), Some(&both), body.as_bytes(), 1010, &t).unwrap().len(), 1);
    }
}
