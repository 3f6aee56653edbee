//! Where each model source stands, as `/ready` reports it: an onnx backend
//! that fetches its models from a registry (MLflow) sets a JSON object (the
//! registry, whether it answered, the version served); the data plane's
//! readiness answer lists them. Process-wide like `fleet`, keyed by backend
//! name; each entry is owned by one backend instance (`owner`), so the
//! instance a reload retires cannot erase its successor's entry.

use std::collections::BTreeMap;
use std::sync::Mutex;

static DETAIL: Mutex<BTreeMap<String, (u64, String)>> = Mutex::new(BTreeMap::new());

/// Sets `backend`'s detail (a JSON object), owned by `owner`.
pub fn set(backend: &str, owner: u64, detail: String) {
    DETAIL.lock().unwrap_or_else(|e| e.into_inner()).insert(backend.to_owned(), (owner, detail));
}

/// Removes `backend`'s detail if `owner` still owns it; whether it did.
pub fn remove(backend: &str, owner: u64) -> bool {
    let mut d = DETAIL.lock().unwrap_or_else(|e| e.into_inner());
    let owned = d.get(backend).is_some_and(|(o, _)| *o == owner);
    if owned {
        d.remove(backend);
    }
    owned
}

/// Every source's detail as a JSON array, `None` when there are none.
pub fn detail() -> Option<String> {
    let d = DETAIL.lock().unwrap_or_else(|e| e.into_inner());
    if d.is_empty() {
        return None;
    }
    Some(format!("[{}]", d.values().map(|(_, j)| j.as_str()).collect::<Vec<_>>().join(",")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_owner_cannot_remove_a_new_entry() {
        set("mlflow-test-b", 1, r#"{"a":1}"#.into());
        set("mlflow-test-b", 2, r#"{"a":2}"#.into());
        assert!(!remove("mlflow-test-b", 1));
        assert!(detail().unwrap().contains(r#"{"a":2}"#));
        assert!(remove("mlflow-test-b", 2));
        assert!(!detail().unwrap_or_default().contains("\"a\""));
    }
}

/// A model source that takes registry webhooks: the model it serves, the
/// secret a delivery must be signed with, and what wakes its poller.
#[derive(Clone)]
pub struct WebhookTarget {
    pub backend: String,
    pub model: String,
    pub secret: std::sync::Arc<[u8]>,
    pub wake: std::sync::Arc<dyn Fn() + Send + Sync>,
}

type Targets = BTreeMap<String, (u64, WebhookTarget)>;
static WEBHOOKS: Mutex<Targets> = Mutex::new(BTreeMap::new());

/// Registers `backend`'s webhook target, owned by `owner` (as `set`).
pub fn set_webhook(owner: u64, target: WebhookTarget) {
    WEBHOOKS.lock().unwrap_or_else(|e| e.into_inner()).insert(target.backend.clone(), (owner, target));
}

/// Removes `backend`'s webhook target if `owner` still owns it.
pub fn remove_webhook(backend: &str, owner: u64) {
    let mut w = WEBHOOKS.lock().unwrap_or_else(|e| e.into_inner());
    if w.get(backend).is_some_and(|(o, _)| *o == owner) {
        w.remove(backend);
    }
}

/// Every registered webhook target.
pub fn webhook_targets() -> Vec<WebhookTarget> {
    WEBHOOKS.lock().unwrap_or_else(|e| e.into_inner()).values().map(|(_, t)| t.clone()).collect()
}
