//! The admission webhook's decision, without sockets: an AdmissionReview
//! (`admission.k8s.io/v1`) in, the AdmissionReview answer out. The pod is
//! injected by [`crate::pod::inject`] (the code `switchyard inject` runs) and
//! the answer carries the JSONPatch from the pod as sent to the pod as injected.

use base64::Engine;
use serde_json::{json, Map, Value};

use crate::annotations::Defaults;
use crate::pod::{self, Outcome, Policy};

pub const API_VERSION: &str = "admission.k8s.io/v1";

/// A request the webhook cannot answer with an AdmissionReview (no `request.uid` to echo).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct BadReview(pub String);

/// Answers one AdmissionReview. Anything about the object itself (not a pod,
/// not a CREATE, a pod that does not parse) is allowed unchanged with a
/// warning: the webhook never blocks what it does not understand. A pod that
/// asks for injection and cannot have it is denied with code 400 and the reasons.
pub fn review(body: &[u8], defaults: &Defaults, policy: Policy) -> Result<Value, BadReview> {
    let review: Value = serde_json::from_slice(body).map_err(|e| BadReview(format!("the body is not JSON: {e}")))?;
    if review.get("kind").and_then(Value::as_str) != Some("AdmissionReview") {
        return Err(BadReview("the body is not an AdmissionReview".into()));
    }
    match review.get("apiVersion").and_then(Value::as_str) {
        Some(API_VERSION) => {}
        other => {
            return Err(BadReview(format!(
                "AdmissionReview version {other:?} is not supported: set admissionReviewVersions: [\"v1\"]"
            )))
        }
    }
    let request = review.get("request").ok_or_else(|| BadReview("the AdmissionReview has no request".into()))?;
    let uid = match request.get("uid") {
        Some(Value::String(u)) if !u.is_empty() => u.clone(),
        _ => return Err(BadReview("the AdmissionReview request has no uid".into())),
    };
    Ok(
        json!({"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": respond(uid, request, defaults, policy)}),
    )
}

fn respond(uid: String, request: &Value, defaults: &Defaults, policy: Policy) -> Value {
    let allow_with = |warning: String| -> Value {
        tracing::warn!(uid = %uid, "{warning}");
        json!({"uid": uid, "allowed": true, "warnings": [format!("switchyard injector: {warning}")]})
    };
    let kind = request.get("kind");
    let is_pod = kind.and_then(|k| k.get("kind")).and_then(Value::as_str) == Some("Pod")
        && kind.and_then(|k| k.get("group")).and_then(Value::as_str).unwrap_or("").is_empty();
    if !is_pod {
        return allow_with(format!("not a pod ({}): nothing injected", kind.map(Value::to_string).unwrap_or_default()));
    }
    let operation = request.get("operation").and_then(Value::as_str).unwrap_or("");
    if operation != "CREATE" {
        return allow_with(format!("operation {operation:?} is not CREATE: nothing injected"));
    }
    if request.get("subResource").and_then(Value::as_str).is_some_and(|s| !s.is_empty()) {
        return allow_with("a pod subresource: nothing injected".into());
    }
    let Some(original) = request.get("object").filter(|o| o.is_object() && o.get("spec").is_some_and(Value::is_object))
    else {
        return allow_with("the request carries no pod object with a spec: nothing injected".into());
    };
    let namespace = request.get("namespace").and_then(Value::as_str).unwrap_or("");
    let name = original
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .or_else(|| original.pointer("/metadata/generateName").and_then(Value::as_str).map(|g| format!("{g}*")))
        .unwrap_or_else(|| "(unnamed)".into());
    let who = format!("pod {namespace}/{name}");
    let dry_run = request.get("dryRun").and_then(Value::as_bool).unwrap_or(false);

    let mut injected = original.clone();
    match pod::inject(&mut injected, &Map::new(), &[], defaults, policy) {
        Ok(Outcome::Injected { notes }) => {
            let patch = json_patch::diff(original, &injected);
            let patch = serde_json::to_vec(&patch).expect("a JSON patch serializes");
            tracing::info!(uid = %uid, dry_run, "{who}: injected{}", notes.iter().map(|n| format!("; {n}")).collect::<String>());
            let mut r = json!({
                "uid": uid,
                "allowed": true,
                "patchType": "JSONPatch",
                "patch": base64::engine::general_purpose::STANDARD.encode(patch),
            });
            if !notes.is_empty() {
                r["warnings"] = json!(notes.iter().map(|n| format!("switchyard injector: {n}")).collect::<Vec<_>>());
            }
            r
        }
        Ok(Outcome::AlreadyInjected { version }) => {
            tracing::info!(uid = %uid, "{who}: already injected (switchyard {version}), unchanged");
            json!({"uid": uid, "allowed": true})
        }
        Ok(Outcome::Skipped(why)) => {
            tracing::debug!(uid = %uid, "{who}: skipped ({why})");
            json!({"uid": uid, "allowed": true})
        }
        Err(refusal) => {
            let message = format!("switchyard injector refused {who}: {refusal}");
            tracing::warn!(uid = %uid, dry_run, "{message}");
            json!({
                "uid": uid,
                "allowed": false,
                "status": {"status": "Failure", "code": 400, "reason": "BadRequest", "message": message},
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(kind: &str, operation: &str, object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": API_VERSION,
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": kind},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "models",
                "operation": operation,
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": object,
                "oldObject": null,
                "dryRun": false,
            }
        }))
        .unwrap()
    }

    fn pod(annotations: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"generateName": "triton-7c9f-", "annotations": annotations},
               "spec": {"containers": [{"name": "triton", "image": "triton", "ports": [{"containerPort": 8000}]}]}})
    }

    #[test]
    fn the_patch_applied_to_the_pod_is_the_injected_pod() {
        let p = pod(json!({"switchyard.io/inject": "enabled", "switchyard.io/config": "sy"}));
        let answer = review(&admission("Pod", "CREATE", p.clone()), &Defaults::default(), Policy::OptIn).unwrap();
        let r = &answer["response"];
        assert_eq!(
            (r["uid"].as_str(), r["allowed"].as_bool()),
            (Some("705ab4f5-6393-11e8-b7cc-42010a800002"), Some(true))
        );
        assert_eq!(r["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD.decode(r["patch"].as_str().unwrap()).unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        let mut patched = p.clone();
        json_patch::patch(&mut patched, &patch).unwrap();
        let mut expected = p;
        pod::inject(&mut expected, &Map::new(), &[], &Defaults::default(), Policy::OptIn).unwrap();
        assert_eq!(patched, expected);
    }

    #[test]
    fn what_is_not_a_pod_create_is_allowed_with_a_warning() {
        let p = pod(json!({"switchyard.io/inject": "enabled", "switchyard.io/config": "sy"}));
        for body in [
            admission("Deployment", "CREATE", p.clone()),
            admission("Pod", "UPDATE", p),
            admission("Pod", "CREATE", json!("junk")),
        ] {
            let r = review(&body, &Defaults::default(), Policy::OptIn).unwrap()["response"].clone();
            assert_eq!(r["allowed"], true);
            assert!(r.get("patch").is_none());
            assert!(r["warnings"][0].as_str().unwrap().starts_with("switchyard injector: "), "{r}");
        }
    }

    #[test]
    fn a_refusal_is_a_400_denial_naming_the_pod() {
        let body = admission("Pod", "CREATE", pod(json!({"switchyard.io/inject": "enabled"})));
        let r = review(&body, &Defaults::default(), Policy::OptIn).unwrap()["response"].clone();
        assert_eq!(r["allowed"], false);
        assert_eq!(r["status"]["code"], 400);
        let m = r["status"]["message"].as_str().unwrap();
        assert!(
            m.starts_with("switchyard injector refused pod models/triton-7c9f-*: switchyard.io/config is missing"),
            "{m}"
        );
    }

    #[test]
    fn namespace_policy_injects_unannotated_pods() {
        let body = admission("Pod", "CREATE", pod(json!({"switchyard.io/config": "sy"})));
        assert!(review(&body, &Defaults::default(), Policy::OptIn).unwrap()["response"].get("patch").is_none());
        assert!(review(&body, &Defaults::default(), Policy::OptOut).unwrap()["response"].get("patch").is_some());
    }

    #[test]
    fn what_is_not_an_admission_review_is_a_bad_request() {
        for (body, needle) in [
            (&b"{"[..], "not JSON"),
            (&br#"{"kind":"Pod"}"#[..], "not an AdmissionReview"),
            (
                &br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1beta1","request":{"uid":"u"}}"#[..],
                "v1beta1",
            ),
            (&br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{}}"#[..], "no uid"),
        ] {
            let e = review(body, &Defaults::default(), Policy::OptIn).unwrap_err();
            assert!(e.0.contains(needle), "{needle}: {e}");
        }
    }
}
