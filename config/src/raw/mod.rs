//! The raw, serde-facing shape of a Switchyard config file, and [`read`], which
//! parses YAML text into it.
//!
//! These structs mirror the YAML exactly (`deny_unknown_fields` everywhere; a
//! backend's fields are denied by its kind's struct, see [`backend`]) and
//! carry source locations (`Spanned`) where validation needs to point back at
//! the file. Nothing here is used outside the config crate: `validate` turns a
//! `RawConfig` into a `ValidatedConfig` of real types.

mod backend;
mod error;
mod graph;
mod reliability;
mod rules;
mod sources;

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

pub use backend::*;
pub use graph::*;
pub use reliability::*;
pub use rules::*;
pub use sources::*;

use crate::validated::FieldError;

pub type S<T> = Spanned<T>;

/// YAML text → `RawConfig`, backends included (their fields in a second pass,
/// see [`backend`]). A file that is not the shape of a config stops at its
/// first problem: bad YAML, an unknown field, a wrong type.
pub fn read(text: &str) -> Result<RawConfig, FieldError> {
    if text.trim().is_empty() {
        return Ok(RawConfig::default());
    }
    let mut raw: RawConfig = serde_saphyr::from_str(text).map_err(|e| error::field_error("<yaml>", &e))?;
    read_fields(text, &mut raw.backends)?;
    Ok(raw)
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub listeners: RawListeners,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub routing: RawRouting,
    #[serde(default)]
    pub runtime: RawRuntime,
    #[serde(default)]
    pub logging: RawLogging,
    #[serde(default)]
    pub backends: BTreeMap<String, S<RawBackend>>,
    #[serde(default)]
    pub models: BTreeMap<String, S<RawModel>>,
    /// Inference graphs over the models (docs/ensembles.md).
    #[serde(default)]
    pub graphs: BTreeMap<String, S<RawGraph>>,
    /// Response cache tiers shared by every cached variant.
    #[serde(default)]
    pub cache: RawCache,
    /// Control-plane settings beyond its listener (fleet mode).
    #[serde(default)]
    pub control: RawControl,
    #[serde(default)]
    pub resolver: RawResolver,
    /// Concurrency limits per model and backend, and who is shed first.
    #[serde(default)]
    pub admission: RawAdmission,
    /// Drain on SIGTERM and the listener hand-over of `serve --upgrade`.
    #[serde(default)]
    pub lifecycle: RawLifecycle,
    /// W3C trace context and OTLP span export (docs/monitoring.md).
    pub tracing: Option<S<RawTracing>>,
    /// Authentication and authorization of the data plane (absent: open).
    pub auth: Option<S<RawAuth>>,
    /// Token buckets on the data plane (absent: none).
    pub rate_limits: Option<S<RawRateLimits>>,
    #[serde(default)]
    pub access_log: RawAccessLog,
    /// What the server says it is (V2 server metadata).
    #[serde(default)]
    pub server: RawServer,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTracing {
    /// OTLP/gRPC collector, `http://host:port` (4317 is the collector's default).
    pub otlp_endpoint: S<String>,
    pub sampling_ratio: Option<S<f64>>,
    pub parent_based: Option<bool>,
    pub service_name: Option<S<String>>,
    pub max_queue: Option<S<u64>>,
    pub max_batch: Option<S<u64>>,
    pub export_interval: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    #[serde(default)]
    pub api_keys: Vec<S<RawApiKey>>,
    /// A mounted secret: one `principal sha256:HEX perm[,perm...]` per line, re-read every `refresh`.
    pub api_keys_file: Option<S<String>>,
    pub jwt: Option<S<RawJwt>>,
    pub override_permission: Option<S<String>>,
    pub refresh: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiKey {
    pub principal: S<String>,
    /// `sha256:` and 64 hex digits: the hash of the key, never the key.
    pub sha256: S<String>,
    #[serde(default)]
    pub permissions: Vec<S<String>>,
    /// Its requests' admission priority (1 is the highest).
    pub priority: Option<S<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    pub jwks_file: Option<S<String>>,
    /// `https://` (or `http://` on loopback) URL of the issuer's JWKS.
    pub jwks_url: Option<S<String>>,
    /// TLS to `jwks_url`: CA, client certificate, server name.
    pub jwks_tls: Option<S<RawClientTls>>,
    /// Longest time a fetched JWKS is used before it is fetched again.
    pub jwks_refresh: Option<S<String>>,
    pub issuer: Option<S<String>>,
    pub audience: Option<S<String>>,
    pub leeway: Option<S<String>>,
    pub permissions_claim: Option<S<String>>,
    /// The claim carrying the principal's admission priority (default `priority`).
    pub priority_claim: Option<S<String>>,
}

/// The server's identity in V2 server metadata (`GET /v2`, gRPC ServerMetadata)
/// and the Triton extensions it offers beyond the defaults.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub name: Option<S<String>>,
    pub version: Option<S<String>>,
    /// Triton's system shared memory extension (register regions, tensors in them).
    pub system_shared_memory: Option<S<bool>>,
    /// A remote backend whose own server metadata (identity, extensions) `GET /v2` answers.
    pub metadata_from: Option<S<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawControl {
    pub fleet: Option<S<RawFleet>>,
}

/// Fleet mode: replicas share their control state through Redis.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFleet {
    /// Standalone `redis://host:port[/db]`.
    pub redis: Option<S<String>>,
    /// The fleet's name: replicas with the same name (and Redis) act as one.
    pub fleet: Option<S<String>>,
    pub poll_interval: Option<S<String>>,
    pub lease_ttl: Option<S<String>>,
    pub timeout: Option<S<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimits {
    pub global: Option<S<RawBucket>>,
    pub per_principal: Option<S<RawBucket>>,
    #[serde(default)]
    pub per_model: BTreeMap<String, S<RawBucket>>,
    /// Share the buckets across replicas through Redis (absent: each process its own).
    pub redis: Option<S<RawRateRedis>>,
}

/// Fleet-wide buckets: every replica with the same Redis and `key_prefix` shares them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateRedis {
    /// Standalone `redis://host:port[/db]`.
    pub url: Option<S<String>>,
    pub key_prefix: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub connect_timeout: Option<S<String>>,
    /// `local` (default), `open` or `closed`: what to do while Redis cannot answer.
    pub on_unavailable: Option<S<String>>,
    pub breaker_failures: Option<S<u64>>,
    pub breaker_cooldown: Option<S<String>>,
    /// How long a replica may hold tokens taken from Redis ahead of its requests.
    pub lease: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBucket {
    pub requests_per_second: Option<S<f64>>,
    pub burst: Option<S<f64>>,
    pub bytes_per_second: Option<S<f64>>,
    pub bytes_burst: Option<S<f64>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    pub enabled: Option<bool>,
    pub path: Option<S<String>>,
    pub sample: Option<S<f64>>,
    pub body_hash: Option<bool>,
    /// Lines waiting for the writer thread; beyond it access lines are dropped and counted.
    pub queue: Option<S<u64>>,
    /// Longest a written line waits in the writer's buffer.
    pub flush_interval: Option<S<String>>,
}

/// The DNS resolver of `dns:` backends.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawResolver {
    /// `ip:port` of each name server (default: the system's).
    #[serde(default)]
    pub nameservers: Vec<S<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    pub l1_max_bytes: Option<S<u64>>,
    pub redis: Option<S<RawRedis>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// Standalone: one `redis://host:port[/db]`.
    pub url: Option<S<String>>,
    /// Redis Cluster: seed nodes.
    pub cluster: Option<S<Vec<S<String>>>>,
    pub timeout: Option<S<String>>,
    pub connect_timeout: Option<S<String>>,
    pub breaker_failures: Option<S<u64>>,
    pub breaker_cooldown: Option<S<String>>,
    pub key_prefix: Option<S<String>>,
}

/// Per-model or per-variant cache opt-in.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCachePolicy {
    pub ttl: S<String>,
    pub max_entry_bytes: Option<S<u64>>,
    pub l2: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawListeners {
    pub http: Option<RawHttpListener>,
    pub metrics: Option<RawPlainListener>,
    pub control: Option<RawControlListener>,
    pub grpc: Option<RawGrpcListener>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawGrpcListener {
    pub tls: Option<S<RawTls>>,
    pub address: Option<S<String>>,
    pub enabled: Option<bool>,
    pub max_message_bytes: Option<S<u64>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawHttpListener {
    pub tls: Option<S<RawTls>>,
    pub address: Option<S<String>>,
    pub default_upstream: Option<S<String>>,
    /// TLS to an `https://` default upstream: CA, client certificate, server name.
    pub default_upstream_tls: Option<S<RawClientTls>>,
    pub threads: Option<S<u64>>,
}

/// A listener's TLS: PEM files, relative to the config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: S<String>,
    pub key: S<String>,
    /// CA bundle client certificates must chain to (mutual TLS); absent: no client certificate asked.
    pub client_ca: Option<S<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawPlainListener {
    pub tls: Option<S<RawTls>>,
    pub address: Option<S<String>>,
    pub enabled: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawControlListener {
    pub address: Option<S<String>>,
    pub enabled: Option<bool>,
    pub tls: Option<S<RawTls>>,
    pub token: Option<String>,
    /// Where API changes persist (default: `<config file>.state.json`).
    pub state_file: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_body_bytes: Option<S<u64>>,
    pub header_read_timeout: Option<S<String>>,
    pub backend_timeout: Option<S<String>>,
    pub idle_timeout: Option<S<String>>,
    pub body_read_timeout: Option<S<String>>,
    pub max_header_bytes: Option<S<u64>>,
    pub max_connections: Option<S<u64>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRouting {
    pub sticky_header: Option<S<String>>,
    pub override_header: Option<S<String>>,
    /// `false`: the override header is ignored for every client.
    pub allow_override: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    pub onnx: Option<RawOnnxRuntime>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawOnnxRuntime {
    pub library_path: Option<String>,
    pub pool_threads: Option<S<u64>>,
    pub intra_op_threads: Option<S<u64>>,
    pub execution_provider: Option<S<String>>,
    pub cuda_device: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLogging {
    pub format: Option<S<String>>,
    pub level: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub sticky_header: Option<S<String>>,
    pub variants: S<Vec<S<RawVariant>>>,
    /// Automated canary analysis between two of the variants.
    pub rollout: Option<S<RawRollout>>,
    /// Response cache for every deterministic variant of the model.
    pub cache: Option<S<RawCachePolicy>>,
    /// Drift detection and prediction quality (docs/monitoring.md).
    pub monitoring: Option<S<RawMonitoring>>,
    /// Triton sequence affinity: the table of live `sequence_id`s (docs/triton.md).
    pub sequences: Option<S<RawSequences>>,
    /// Content routing: rules tried in order before the weighted split (docs/routing.md).
    #[serde(default)]
    pub rules: Vec<S<RawRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSequences {
    /// A sequence with no request for this long is released.
    pub idle_timeout: Option<S<String>>,
    /// Live sequences of the model at most; a new one past it is refused.
    pub max_active: Option<S<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMonitoring {
    pub drift: Option<S<RawDrift>>,
    pub quality: Option<S<RawQuality>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuality {
    /// `classification` (argmax of `output`) or `regression` (its value).
    pub task: S<String>,
    pub output: S<String>,
    pub window: Option<S<u64>>,
    pub store: Option<S<u64>>,
    /// Fleet mode: how long an answer waits for its feedback in Redis.
    pub ttl: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDrift {
    /// A profile written by `switchyard profile` (relative to the config file).
    pub reference: S<String>,
    pub sample_rate: Option<S<f64>>,
    pub window: Option<S<u64>>,
    pub min_samples: Option<S<u64>>,
    pub threshold: Option<S<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRollout {
    pub baseline: S<String>,
    pub canary: S<String>,
    pub steps: S<Vec<f64>>,
    pub interval: Option<S<String>>,
    pub max_error_rate_increase: Option<S<f64>>,
    pub max_p99_ratio: Option<S<f64>>,
    pub min_requests: Option<S<u64>>,
    /// Roll back when the canary's data or prediction drift (PSI) exceeds this.
    pub max_drift: Option<S<f64>>,
    /// Roll back when the canary's accuracy (feedback) is below the baseline's by more than this.
    pub max_accuracy_drop: Option<S<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVariant {
    pub name: S<String>,
    pub backend: S<String>,
    /// Model name to ask the backend for (defaults to the route's name).
    pub model: Option<S<String>>,
    /// Model version to ask the backend for.
    pub version: Option<S<serde_saphyr_scalar::Scalar>>,
    #[serde(default = "default_weight")]
    pub weight: S<f64>,
    /// Dynamic batching of this variant's requests.
    pub batching: Option<S<RawBatching>>,
    /// Percent of the model's requests mirrored to this variant (a shadow gets no primary traffic).
    pub shadow_percent: Option<S<f64>>,
    /// Response cache of this variant (wins over the model's).
    pub cache: Option<S<RawCachePolicy>>,
    /// `false`: answers may differ for the same input; never cached.
    pub deterministic: Option<bool>,
    /// TF Serving version labels (`/labels/{l}`) this variant answers besides its name.
    #[serde(default)]
    pub labels: Vec<S<String>>,
    /// Inputs fetched from a feature store (docs/features.md).
    pub features: Option<S<RawFeatures>>,
    /// How TorchServe clients' JSON bodies map to this variant's tensors (docs/torchserve.md).
    pub torchserve: Option<S<RawTorchServe>>,
}

/// `variants[].torchserve`: a TorchServe body ↔ the model's one input tensor.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTorchServe {
    /// JSON pointer to the tensor in the body; "" (the default) is the whole body.
    pub input: Option<S<String>>,
    /// The answer: "" (the default) the bare nested list, else `{"<output>": list}`.
    pub output: Option<S<String>>,
    /// `tensor` (the default): a body is the whole tensor; `row`: one row of a batched input.
    pub body: Option<S<String>>,
    /// Which of the model's outputs answers; unset: the model must have exactly one.
    pub output_tensor: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBatching {
    pub max_batch_size: S<u64>,
    pub max_queue_delay: Option<S<String>>,
    #[serde(default)]
    pub preferred_batch_sizes: Vec<u64>,
    pub max_queue_size: Option<S<u64>>,
    pub default_timeout: Option<S<String>>,
    pub priority_levels: Option<S<u64>>,
    pub default_priority: Option<S<u64>>,
    pub adaptive: Option<bool>,
    pub max_concurrent_batches: Option<S<u64>>,
}

fn default_weight() -> S<f64> {
    Spanned::new(1.0, serde_saphyr::Location::UNKNOWN, serde_saphyr::Location::UNKNOWN)
}

/// A YAML scalar that may be written as a number or a string (`version: 2` or `version: "2"`).
pub mod serde_saphyr_scalar {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(untagged)]
    pub enum Scalar {
        Int(u64),
        Str(String),
    }
}
