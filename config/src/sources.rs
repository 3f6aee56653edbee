//! Validated types of model and input sources: the MLflow registry an onnx
//! backend fetches its model from, and the feature store a variant's inputs
//! are completed from. Their checks live in `validate::sources`.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

/// MLflow's own default port (`mlflow server`), used when the URL gives none.
pub const DEFAULT_MLFLOW_PORT: u16 = 5000;
/// How often an MLflow selector is resolved again when not given.
pub const DEFAULT_MLFLOW_POLL: Duration = Duration::from_secs(30);
/// Deadline of one registry call or artifact download when not given.
pub const DEFAULT_MLFLOW_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of one feature-store fetch when not given.
pub const DEFAULT_FEATURE_TIMEOUT: Duration = Duration::from_millis(100);
/// Entities kept in a variant's feature cache when not given.
pub const DEFAULT_FEATURE_CACHE_ENTRIES: usize = 100_000;

/// Which version of a registered model to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MlflowSelector {
    /// `MODEL/3`: that version, for good.
    Version(u64),
    /// `MODEL@champion`: the version the alias points at, followed as it moves.
    Alias(String),
    /// `MODEL/Production`: the newest version in that stage (MLflow's stages are deprecated but served).
    Stage(String),
    /// `MODEL` or `MODEL/latest`: the newest version.
    Latest,
}

impl std::fmt::Display for MlflowSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MlflowSelector::Version(v) => write!(f, "version {v}"),
            MlflowSelector::Alias(a) => write!(f, "@{a}"),
            MlflowSelector::Stage(s) => write!(f, "stage {s}"),
            MlflowSelector::Latest => f.write_str("latest"),
        }
    }
}

/// An onnx backend whose repository is a model of an MLflow registry.
#[derive(Debug, Clone, PartialEq)]
pub struct MlflowSource {
    /// `http://HOST:PORT`, no trailing slash: the tracking server's REST API root.
    pub base_url: String,
    /// The registered model's name; also the name the backend serves it under.
    pub model: String,
    pub selector: MlflowSelector,
    /// How often the selector is resolved again.
    pub poll_interval: Duration,
    /// Deadline of each registry call and each artifact download.
    pub timeout: Duration,
    /// The secret MLflow signs webhook deliveries with; `None`: polling only.
    pub webhook_secret: Option<WebhookSecret>,
}

/// A webhook's shared secret; `Debug` never prints it.
#[derive(Clone, PartialEq)]
pub struct WebhookSecret(pub Arc<[u8]>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(..)")
    }
}

/// Where the entity key of each row comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum EntityKeys {
    /// An input tensor (INT64/INT32 or BYTES), one key per row; removed from the inputs unless `keep`.
    Input { name: Arc<str>, keep: bool },
    /// A request parameter (integer or string): one row.
    Parameter(Arc<str>),
}

/// The element type of the tensor features are assembled into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureDatatype {
    Fp32,
    Fp64,
    Int64,
}

impl FeatureDatatype {
    /// The V2 datatype name.
    pub fn as_str(self) -> &'static str {
        match self {
            FeatureDatatype::Fp32 => "FP32",
            FeatureDatatype::Fp64 => "FP64",
            FeatureDatatype::Int64 => "INT64",
        }
    }
}

/// A variant's inputs fetched from a Feast feature server (docs/features.md).
#[derive(Debug, Clone, PartialEq)]
pub struct FeaturesConfig {
    /// Base URL of the feature server, no trailing slash.
    pub feast_url: String,
    /// The entity's join key in the feature store.
    pub entity: Arc<str>,
    pub keys: EntityKeys,
    /// `view:feature` references, in column order.
    pub features: Vec<Arc<str>>,
    /// The input tensor built, `[rows, features.len()]`.
    pub input: Arc<str>,
    pub datatype: FeatureDatatype,
    /// One value per feature for an entity the store lacks; `None`: such a request is refused (404).
    pub defaults: Option<Vec<f64>>,
    pub timeout: Duration,
    /// How long a fetched row is reused; zero: no cache.
    pub cache_ttl: Duration,
    pub cache_max_entries: NonZeroUsize,
}
