//! The raw shape of where inputs and models come from besides the request and
//! a local directory: an onnx backend's `mlflow` block (the registry a
//! `repository: mlflow://…` URL names) and a variant's `features` block (online
//! features from a Feast feature server).

use serde::Deserialize;
use serde_saphyr::Spanned;

type S<T> = Spanned<T>;

/// `backends.NAME.mlflow`: how an onnx backend whose `repository` is an
/// `mlflow://HOST[:PORT]/MODEL…` URL talks to the registry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMlflowSource {
    /// Local directory the fetched versions are kept in (`MODEL/VERSION/model.onnx`).
    pub cache_dir: Option<S<String>>,
    /// How often the selector is resolved again (an alias or stage may move).
    pub poll_interval: Option<S<String>>,
    /// Deadline of each registry call and of each artifact download.
    pub timeout: Option<S<String>>,
    /// Shared secret of an MLflow webhook: a delivery to the control
    /// listener's `/sources/mlflow/webhook` signed with it syncs at once.
    pub webhook_secret: Option<S<String>>,
    /// The same, read from a file (trailing whitespace trimmed).
    pub webhook_secret_file: Option<S<String>>,
}

/// `models[].variants[].features`: inputs fetched from a feature store.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFeatures {
    /// Base URL of a Feast feature server (`feast serve`).
    pub feast: Option<S<String>>,
    /// The entity key's name in the feature store (a Feast join key).
    pub entity: S<String>,
    /// Input tensor holding the entity keys (one per row).
    pub entity_input: Option<S<String>>,
    /// Request parameter holding the entity key (one row).
    pub entity_parameter: Option<S<String>>,
    /// Keep the entity tensor among the model's inputs (it is removed by default).
    pub keep_entity_input: Option<bool>,
    /// `view:feature` references, in the order of the tensor's columns.
    pub features: Vec<S<String>>,
    /// The input tensor the features become, `[rows, features]`.
    pub input: S<String>,
    /// FP32 (default), FP64 or INT64.
    pub datatype: Option<S<String>>,
    /// Per-feature value used when an entity has none; absent: such a request is refused.
    pub defaults: Option<S<Vec<f64>>>,
    /// Deadline of one fetch from the feature store.
    pub timeout: Option<S<String>>,
    /// How long fetched rows are reused; absent or 0: every request fetches.
    pub cache_ttl: Option<S<String>>,
    /// Most entities kept in the cache.
    pub cache_max_entries: Option<S<u64>>,
}
