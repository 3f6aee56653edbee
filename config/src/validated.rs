//! The validated configuration: the real types (`SocketAddr`, `Duration`,
//! `NonZeroUsize`, `Arc<str>`) the rest of Switchyard reads, their
//! `DEFAULT_*` constants, and the error types of validation. A leaf: it
//! knows nothing of YAML or of how it is checked.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Data-plane HTTP listener (Triton's port).
pub const DEFAULT_HTTP_ADDRESS: &str = "0.0.0.0:8000";
/// Data-plane gRPC listener (Triton's port).
pub const DEFAULT_GRPC_ADDRESS: &str = "0.0.0.0:8001";
/// Largest gRPC message accepted or sent, both directions (64 MiB; gRPC's own default is 4 MiB).
pub const DEFAULT_GRPC_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Prometheus listener (Triton's port).
pub const DEFAULT_METRICS_ADDRESS: &str = "0.0.0.0:8002";
/// Control API: loopback only unless configured otherwise.
pub const DEFAULT_CONTROL_ADDRESS: &str = "127.0.0.1:9901";
/// Largest request body accepted on the data port (64 MiB).
pub const DEFAULT_MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;
/// How long a client may take to send its request headers.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest request header accepted (Envoy's default is 60 KiB).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// Pingora's own fixed cap on a request header, which no setting may exceed.
pub const MAX_HEADER_BYTES_CAP: usize = 1024 * 1024 - 1;
/// How long an idle keep-alive connection is kept open.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a client may take to send a whole request body.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a backend may take to answer one request.
pub const DEFAULT_BACKEND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a TCP connect to a backend endpoint may take.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest time between two DNS resolutions of a `dns:` backend.
pub const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(5);
/// Idle keep-alive connections kept per backend endpoint.
pub const DEFAULT_POOL_SIZE: usize = 64;
/// Consecutive failures after which an endpoint is ejected.
pub const DEFAULT_EJECT_AFTER_FAILURES: u32 = 5;
/// How long an ejected endpoint stays out of rotation.
pub const DEFAULT_EJECT_FOR: Duration = Duration::from_secs(10);
/// Header that forces a variant by name.
pub const DEFAULT_OVERRIDE_HEADER: &str = "x-switchyard-variant";
/// Warm-up runs per loaded ONNX model version.
pub const DEFAULT_WARMUP_RUNS: u32 = 3;
/// Runs of each warm-up sample per session.
pub const DEFAULT_WARMUP_REQUESTS: u32 = 1;
/// The server's name in V2 server metadata.
pub const DEFAULT_SERVER_NAME: &str = "switchyard";
/// How long a Triton sequence may go without a request before it is released.
/// Longer than Triton's own default `max_sequence_idle_microseconds` (1 s), so
/// Switchyard never refuses a request its backend would still take: the
/// backend's own limit judges first.
pub const DEFAULT_SEQUENCE_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Live sequences per model at most (about 200 bytes each).
pub const DEFAULT_MAX_SEQUENCES: usize = 65_536;
/// How often the ONNX repository is rescanned when file events are missed.
pub const DEFAULT_REPOSITORY_POLL: Duration = Duration::from_secs(2);

/// A config that passed validation: every reference resolves, every value has its real type.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedConfig {
    pub listeners: Listeners,
    pub limits: Limits,
    pub routing: Routing,
    pub runtime: OnnxRuntime,
    pub logging: Logging,
    pub backends: BTreeMap<Arc<str>, BackendConfig>,
    pub models: BTreeMap<Arc<str>, ModelConfig>,
    /// Inference graphs: routes whose answer is computed by other routes.
    pub graphs: BTreeMap<Arc<str>, crate::graph::GraphConfig>,
    /// Response cache tiers (restart to change; per-variant policies reload).
    pub cache: CacheConfig,
    /// Control-plane settings beyond its listener (restart to change).
    pub control: ControlConfig,
    /// How `dns:` backends resolve their names.
    pub resolver: ResolverConfig,
    /// Concurrency limits and load shedding.
    pub admission: AdmissionConfig,
    /// Drain and upgrade.
    pub lifecycle: Lifecycle,
    /// Span export; `None`: no spans are made (restart to change).
    pub tracing: Option<TracingConfig>,
    /// Data-plane authentication; `None`: every client may call every model (restart to change).
    pub auth: Option<AuthConfig>,
    /// Token buckets (restart to change).
    pub rate_limits: RateLimits,
    pub access_log: AccessLogConfig,
    /// What V2 server metadata says the server is.
    pub server: ServerSettings,
}

/// The server's name and version in V2 server metadata (as Envoy's
/// `server_name`), and whether Triton's system shared memory extension is on.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    pub name: Arc<str>,
    pub version: Arc<str>,
    pub system_shared_memory: bool,
    /// A `v2-http` / `v2-grpc` backend whose own server metadata is answered instead.
    pub metadata_from: Option<Arc<str>>,
}

impl Default for ServerSettings {
    fn default() -> ServerSettings {
        ServerSettings {
            name: Arc::from(DEFAULT_SERVER_NAME),
            version: Arc::from(env!("CARGO_PKG_VERSION")),
            system_shared_memory: false,
            metadata_from: None,
        }
    }
}

/// W3C trace context and OTLP/gRPC span export (docs/monitoring.md).
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// The collector's OTLP/gRPC endpoint, `http://host:port`.
    pub otlp_endpoint: String,
    /// Fraction of new traces (no sampled parent) that are recorded, in [0, 1].
    pub sampling_ratio: f64,
    /// A client's `traceparent` decides: its sampled flag is followed.
    pub parent_based: bool,
    pub service_name: String,
    /// Requests' spans waiting for export; beyond it they are dropped and counted.
    pub max_queue: NonZeroUsize,
    /// Most spans in one export call.
    pub max_batch: NonZeroUsize,
    /// Longest time a span waits for its batch.
    pub export_interval: Duration,
}

pub const DEFAULT_TRACE_SAMPLING_RATIO: f64 = 0.1;
pub const DEFAULT_TRACE_SERVICE_NAME: &str = "switchyard";
pub const DEFAULT_TRACE_MAX_QUEUE: usize = 2048;
pub const DEFAULT_TRACE_MAX_BATCH: usize = 512;
pub const DEFAULT_TRACE_EXPORT_INTERVAL: Duration = Duration::from_secs(1);

/// The `control` section.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ControlConfig {
    /// Fleet mode; `None`: this replica's control state is its own.
    pub fleet: Option<FleetConfig>,
}

/// How often a replica looks at the shared state when not given (the pub/sub
/// notification is the fast path; this bounds convergence when one is missed).
pub const DEFAULT_FLEET_POLL_INTERVAL: Duration = Duration::from_millis(250);
/// The judge lease's lifetime when not given (renewed every third of it).
pub const DEFAULT_FLEET_LEASE_TTL: Duration = Duration::from_secs(3);
/// Deadline of each fleet Redis command when not given.
pub const DEFAULT_FLEET_TIMEOUT: Duration = Duration::from_millis(500);

/// Fleet mode (docs/operations.md, "Fleet").
#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    /// Standalone Redis URL holding the shared state.
    pub redis: String,
    /// The fleet's name; every key is under `switchyard:fleet:{name}:`.
    pub name: String,
    /// Polling fallback of change notifications, and the stats publish period.
    pub poll_interval: Duration,
    /// Judge lease lifetime.
    pub lease_ttl: Duration,
    /// Deadline of each Redis command.
    pub timeout: Duration,
}

/// Clock skew allowed on a JWT's `exp` and `nbf`.
pub const DEFAULT_JWT_LEEWAY: Duration = Duration::from_secs(60);
/// How often key material on disk (JWKS file, API key file) is re-read.
pub const DEFAULT_KEY_REFRESH: Duration = Duration::from_secs(30);
/// The JWT claim that lists a principal's permissions.
pub const DEFAULT_PERMISSIONS_CLAIM: &str = "permissions";
/// The JWT claim that holds a principal's admission priority.
pub const DEFAULT_PRIORITY_CLAIM: &str = "priority";
/// The permission that lets a principal force a variant with the override header.
pub const DEFAULT_OVERRIDE_PERMISSION: &str = "override";
/// Where access and audit lines go.
pub const DEFAULT_ACCESS_LOG_PATH: &str = "stdout";

#[derive(Debug, Clone, PartialEq)]
pub struct AuthConfig {
    pub api_keys: Vec<ApiKey>,
    pub api_keys_file: Option<PathBuf>,
    pub jwt: Option<JwtConfig>,
    pub override_permission: String,
    pub refresh: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    pub principal: String,
    pub sha256: [u8; 32],
    pub permissions: Vec<String>,
    /// Admission priority of its requests (1 is the highest); `None`: the request's own.
    pub priority: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JwtConfig {
    /// Where the signing keys come from: exactly one of a file and a URL.
    pub jwks: JwksSource,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway: Duration,
    pub permissions_claim: String,
    /// The claim holding the principal's admission priority (a positive integer).
    pub priority_claim: String,
}

/// The longest a fetched JWKS is trusted without fetching it again (a
/// `Cache-Control: max-age` above it is cut to it).
pub const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(300);
/// The shortest time between two JWKS fetches, whatever `max-age` or unknown
/// `kid`s ask: a flood of tokens with made-up `kid`s cannot turn into a
/// flood of fetches.
pub const JWKS_MIN_REFETCH: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq)]
pub enum JwksSource {
    /// Re-read every `auth.refresh`.
    File(PathBuf),
    Url {
        url: String,
        /// TLS settings of the fetch (an `https://` URL).
        tls: ClientTlsConfig,
        /// Upper bound on the cache lifetime; `Cache-Control: max-age` may shorten it.
        refresh: Duration,
    },
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RateLimits {
    pub global: Option<Bucket>,
    /// One bucket per principal (per client IP address when auth is off).
    pub per_principal: Option<Bucket>,
    /// One bucket per model named here; `*`: one per every other model.
    pub per_model: BTreeMap<Arc<str>, Bucket>,
    /// Buckets shared by every replica through Redis; `None`: local to the process.
    pub redis: Option<SharedRateLimits>,
}

/// Deadline of each rate-limit script call when not given: a round trip
/// within a data centre is well under a millisecond.
pub const DEFAULT_RATE_REDIS_TIMEOUT: Duration = Duration::from_millis(50);
/// How long a replica may keep tokens it took from Redis ahead of its requests.
pub const DEFAULT_RATE_LEASE: Duration = Duration::from_millis(100);

/// What a replica does while Redis cannot answer (the breaker is open, a call failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// Each replica enforces the configured buckets by itself (the fleet admits up to N×).
    Local,
    /// Admit without a limit.
    Open,
    /// Refuse every limited request (503 with `Retry-After`).
    Closed,
}

impl Unavailable {
    pub fn as_str(self) -> &'static str {
        match self {
            Unavailable::Local => "local",
            Unavailable::Open => "open",
            Unavailable::Closed => "closed",
        }
    }
}

/// `rate_limits.redis`: fleet-wide token buckets.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedRateLimits {
    pub url: String,
    /// Keys are `{key_prefix}:rl:...`.
    pub key_prefix: String,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub on_unavailable: Unavailable,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
    /// Tokens taken ahead are at most `lease` worth of the rate, used within `lease`.
    pub lease: Duration,
}

/// A token bucket: a sustained rate and a burst, for requests and optionally input bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub requests: Option<Rate>,
    pub bytes: Option<Rate>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogConfig {
    /// `false`: no per-request lines (control-plane audit lines are always written).
    pub enabled: bool,
    /// `stdout`, `stderr` or a file path (appended to).
    pub path: String,
    /// Fraction of successful requests logged; errors are always logged.
    pub sample: f64,
    /// Log the SHA-256 of each inference request body.
    pub body_hash: bool,
    /// Lines waiting for the writer thread; when full, access lines are dropped and counted.
    pub queue: NonZeroUsize,
    /// Longest a line waits in the writer's buffer before it reaches the destination.
    pub flush_interval: Duration,
}

/// Access lines that may wait for the log's writer thread.
pub const DEFAULT_ACCESS_LOG_QUEUE: usize = 8192;
/// How long a line may sit in the access log writer's buffer.
pub const DEFAULT_ACCESS_LOG_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            enabled: true,
            path: DEFAULT_ACCESS_LOG_PATH.into(),
            sample: 1.0,
            body_hash: false,
            queue: NonZeroUsize::new(DEFAULT_ACCESS_LOG_QUEUE).expect("non-zero"),
            flush_interval: DEFAULT_ACCESS_LOG_FLUSH_INTERVAL,
        }
    }
}

/// The DNS resolver of `dns:` backends.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResolverConfig {
    /// Name servers to ask; empty: the system's (`/etc/resolv.conf`, with its search domains and `ndots`).
    pub nameservers: Vec<SocketAddr>,
}

/// Settings given on the command line (or their environment variables) that
/// replace the file's. They are applied to every parse of the file, so a
/// reload never moves a listener the operator pinned: an injected sidecar's
/// ports come from its pod spec while its config comes from a shared ConfigMap.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub http_address: Option<SocketAddr>,
    /// Replaces `listeners.grpc.address`; a file that turns gRPC off keeps it off.
    pub grpc_address: Option<SocketAddr>,
    /// Turns the gRPC listener off whatever the file says.
    pub no_grpc: bool,
    pub metrics_address: Option<SocketAddr>,
    /// Where the control plane persists API changes (replaces `listeners.control.state_file`).
    pub state_file: Option<PathBuf>,
}

impl Overrides {
    pub fn apply(&self, cfg: &mut ValidatedConfig) {
        if let Some(a) = self.http_address {
            cfg.listeners.http.address = a;
        }
        if let (Some(a), Some(g)) = (self.grpc_address, cfg.listeners.grpc.as_mut()) {
            g.address = a;
        }
        if self.no_grpc {
            cfg.listeners.grpc = None;
        }
        if let Some(a) = self.metrics_address {
            cfg.listeners.metrics = Some(a);
        }
        if let (Some(p), Some(c)) = (&self.state_file, cfg.listeners.control.as_mut()) {
            c.state_file = Some(p.clone());
        }
    }
}

/// How often a listener's certificate and key files are compared with what it serves.
pub const TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// A listener's TLS: certificate chain and key (PEM, re-read every
/// `TLS_RELOAD_INTERVAL` and swapped in when they change), and the CA that
/// client certificates must chain to for mutual TLS.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listeners {
    pub http: HttpListener,
    pub metrics: Option<SocketAddr>,
    /// HTTPS on the metrics listener.
    pub metrics_tls: Option<TlsConfig>,
    pub control: Option<ControlListener>,
    /// KServe V2 gRPC; `None` when `listeners.grpc.enabled: false`.
    pub grpc: Option<GrpcListener>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GrpcListener {
    pub address: SocketAddr,
    /// TLS (HTTP/2 over TLS); `None`: plaintext h2c.
    pub tls: Option<TlsConfig>,
    /// Largest message accepted from a client and sent to it; beyond it RESOURCE_EXHAUSTED.
    pub max_message_bytes: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpListener {
    pub address: SocketAddr,
    /// HTTPS; `None`: plain HTTP.
    pub tls: Option<TlsConfig>,
    /// Where requests the listener does not understand natively are proxied unchanged.
    pub default_upstream: Option<Upstream>,
    /// TLS to the default upstream: `Some` exactly when it is `https://`
    /// (the defaults when the file has no `default_upstream_tls`).
    pub default_upstream_tls: Option<ClientTlsConfig>,
    /// Worker threads of the data plane (defaults to the machine's cores).
    pub threads: NonZeroUsize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `host:port`, as it is dialled.
    pub authority: String,
    /// Path prefix prepended to every forwarded path (no trailing slash; may be empty).
    pub base_path: String,
    /// `https://`: the connection is TLS (the backend's or listener's client TLS settings).
    pub tls: bool,
}

impl Upstream {
    pub fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme(), self.authority, self.base_path)
    }
}

/// TLS as a client — to a backend's endpoints, a JWKS URL, the default
/// upstream. The files are checked by validation and re-read every
/// `TLS_RELOAD_INTERVAL` while in use (a rotated CA or client certificate
/// needs no restart).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTlsConfig {
    /// CA bundle the server's certificate must chain to; `None`: the platform's roots.
    pub ca: Option<PathBuf>,
    /// Client certificate chain and key, for servers that require mutual TLS.
    pub identity: Option<ClientIdentity>,
    /// Sent as SNI and verified against the server's certificate instead of the endpoint's host.
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ControlListener {
    pub address: SocketAddr,
    /// Bearer token every control call must carry (`SWITCHYARD_CONTROL_TOKEN` overrides it).
    pub token: Option<String>,
    /// HTTPS (and with `client_ca`, mutual TLS) on the control API.
    pub tls: Option<TlsConfig>,
    /// Where API changes persist; `None` = `<config file>.state.json`.
    pub state_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_body_bytes: u64,
    /// A request header must be complete within this of the connection's start.
    pub header_read_timeout: Duration,
    pub backend_timeout: Duration,
    /// An idle keep-alive connection is closed after this.
    pub idle_timeout: Duration,
    /// A request body must arrive whole within this.
    pub body_read_timeout: Duration,
    /// The longest request header (request line and header fields) accepted.
    pub max_header_bytes: usize,
    /// Open data-plane HTTP connections past which new ones may ask for the
    /// probes only; `None`: derived from the file-descriptor limit at start.
    pub max_connections: Option<NonZeroUsize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    /// Lower-case header name that forces a variant.
    pub override_header: String,
    /// `false`: the override header is ignored for every client.
    pub allow_override: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutionProvider {
    Cpu,
    Cuda { device: u32 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct OnnxRuntime {
    /// Explicit path of `libonnxruntime.so`; `ORT_DYLIB_PATH` and the setup step's location are tried otherwise.
    pub library_path: Option<PathBuf>,
    /// Threads that run sessions (off the async reactor).
    pub pool_threads: NonZeroUsize,
    /// ONNX Runtime intra-op threads per session.
    pub intra_op_threads: NonZeroUsize,
    pub execution_provider: ExecutionProvider,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Logging {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum BackendConfig {
    V2Http(V2HttpBackend),
    V2Grpc(V2GrpcBackend),
    TfServing(TfServingBackend),
    Onnx(OnnxBackend),
}

impl BackendConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            BackendConfig::V2Http(_) => "v2-http",
            BackendConfig::V2Grpc(_) => "v2-grpc",
            BackendConfig::TfServing(_) => "tfserving",
            BackendConfig::Onnx(_) => "onnx",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryMode {
    /// Use the binary tensor extension when the server advertises it in `GET /v2`.
    Auto,
    Always,
    Never,
}

/// Where a remote backend's replicas come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Endpoints {
    /// Fixed in the file (`endpoints:`); never empty.
    List(Vec<Upstream>),
    /// The A/AAAA records of a name (`dns:`), e.g. a Kubernetes headless
    /// Service: re-resolved in the background, the set updated without a reload.
    Dns(DnsEndpoints),
}

/// `dns: host:port` of a remote backend.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsEndpoints {
    /// The name to resolve (`host` of `host:port`).
    pub host: String,
    pub port: u16,
    /// v2-http only: the path prefix every request starts with (`http://host:port/prefix`).
    pub base_path: String,
    /// Longest time between two resolutions; a shorter record TTL resolves sooner.
    pub refresh: Duration,
}

impl Endpoints {
    /// How many replicas the file names (`None`: from DNS, changes at run time).
    pub fn fixed(&self) -> Option<&[Upstream]> {
        match self {
            Endpoints::List(l) => Some(l),
            Endpoints::Dns(_) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct V2HttpBackend {
    pub endpoints: Endpoints,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub pool_size: usize,
    /// Ejection, health checks, retry budget and load-aware picking of the endpoints.
    pub health: EndpointHealth,
    pub binary: BinaryMode,
    /// Which client request headers are sent on to the server.
    pub forward_headers: ForwardHeaders,
    /// `Some`: every endpoint is `https://` (probes and load scrapes too).
    pub tls: Option<ClientTlsConfig>,
}

/// How a remote backend keeps failing replicas out of rotation, bounds its
/// retries and spreads load (docs/backend-health.md).
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointHealth {
    /// Consecutive failures (connect errors, timeouts, 502/503/504, gRPC
    /// UNAVAILABLE) that eject an endpoint.
    pub eject_after_failures: u32,
    /// How long a first ejection lasts; each further one in a row lasts
    /// longer (× the count, at most [`MAX_EJECTION_FACTOR`]×).
    pub eject_for: Duration,
    pub health_check: Option<HealthCheck>,
    pub outlier_detection: Option<OutlierDetection>,
    pub retry_budget: RetryBudget,
    pub load_metrics: Option<LoadMetrics>,
}

/// The longest ejection, as a multiple of `eject_for`.
pub const MAX_EJECTION_FACTOR: u32 = 10;

impl Default for EndpointHealth {
    fn default() -> EndpointHealth {
        EndpointHealth {
            eject_after_failures: DEFAULT_EJECT_AFTER_FAILURES,
            eject_for: DEFAULT_EJECT_FOR,
            health_check: None,
            outlier_detection: None,
            retry_budget: RetryBudget::default(),
            load_metrics: None,
        }
    }
}

/// Active probes: V2 `GET /v2/health/ready` (v2-http) or `ServerReady` (v2-grpc)
/// on every endpoint each `interval`.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    pub interval: Duration,
    pub timeout: Duration,
    /// Failed probes in a row that take an endpoint out of rotation.
    pub unhealthy_after: u32,
    /// Passed probes in a row that bring it back.
    pub healthy_after: u32,
}

/// Every `interval`, endpoints with at least `min_requests` requests in it are
/// compared: one whose error rate exceeds `max_error_rate`, or whose mean
/// latency exceeds `max_latency_ratio` × the median of the endpoints' means, is
/// ejected, never more than `max_ejected_percent` of the set at once.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierDetection {
    pub interval: Duration,
    pub min_requests: u32,
    pub max_error_rate: f64,
    /// `None`: latency is not judged.
    pub max_latency_ratio: Option<f64>,
    pub max_ejected_percent: u32,
}

/// Retries (on another endpoint) stay within `ratio` × the requests of the last
/// 10 s plus `min_per_second` (Linkerd's budget; Envoy's `retry_budget`).
#[derive(Debug, Clone, PartialEq)]
pub struct RetryBudget {
    pub ratio: f64,
    pub min_per_second: u32,
}

impl Default for RetryBudget {
    fn default() -> RetryBudget {
        RetryBudget { ratio: 0.2, min_per_second: 10 }
    }
}

/// Load-aware picking from each endpoint's own Prometheus metrics in Triton's
/// names (`nv_inference_pending_request_count`, `nv_inference_queue_duration_us`).
#[derive(Debug, Clone, PartialEq)]
pub struct LoadMetrics {
    /// `None`: the endpoint's own port.
    pub port: Option<u16>,
    pub path: String,
    pub interval: Duration,
    /// Scrape over https (default: as the backend's endpoints), with the backend's TLS settings.
    pub tls: bool,
}

/// Which client request headers a remote backend receives, on top of the
/// exclusions the proxy always applies (hop-by-hop headers, `host`, framing
/// headers, `grpc-*` transport headers, `x-switchyard-*`, the variant-override
/// header; docs/configuration.md lists them).
///
/// The default (no `forward_headers` in the file) forwards every other header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardHeaders {
    /// Lower-case names; when `Some`, only these are forwarded.
    pub allow: Option<Vec<Arc<str>>>,
    /// Lower-case names never forwarded, applied after `allow`.
    pub deny: Vec<Arc<str>>,
}

/// A remote KServe V2 server over gRPC (Triton, MLServer).
#[derive(Debug, Clone, PartialEq)]
pub struct V2GrpcBackend {
    /// `host:port` of each replica (`base_path` is always empty).
    pub endpoints: Endpoints,
    /// Per request; sent to the server as the `grpc-timeout` deadline.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Largest message sent to or accepted from the server.
    pub max_message_bytes: usize,
    /// Ejection, health checks, retry budget and load-aware picking of the endpoints.
    pub health: EndpointHealth,
    /// Which client request metadata is sent on to the server.
    pub forward_headers: ForwardHeaders,
    /// `Some`: gRPC over TLS to every endpoint (load scrapes too).
    pub tls: Option<ClientTlsConfig>,
}

/// The signature a `tfserving` backend runs when none is configured: TF's default key.
pub const DEFAULT_TF_SIGNATURE: &str = "serving_default";

/// A remote TensorFlow Serving server (docs/tfserving.md, "TF Serving as a
/// backend"): the same endpoints, pooling, ejection, probes, timeouts, TLS
/// and forwarding as the V2 kinds, over TF's REST or gRPC API.
#[derive(Debug, Clone, PartialEq)]
pub struct TfServingBackend {
    /// REST: base URLs (`base_path` kept); gRPC: `host:port` (`base_path` empty).
    pub endpoints: Endpoints,
    pub transport: TfTransport,
    /// The `signature_name` every request names; its inputs and outputs are the model's.
    pub signature_name: Arc<str>,
    /// Per request (sent as the `grpc-timeout` deadline over gRPC).
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub health: EndpointHealth,
    pub forward_headers: ForwardHeaders,
    /// `Some`: every endpoint over TLS (probes too).
    pub tls: Option<ClientTlsConfig>,
}

/// How a `tfserving` backend talks to TF Serving, with the settings only that way has.
#[derive(Debug, Clone, PartialEq)]
pub enum TfTransport {
    /// `POST /v1/models/{m}[/versions/{v}]:predict`, JSON, pooled HTTP/1.1.
    Rest { pool_size: usize },
    /// `tensorflow.serving.PredictionService/Predict`, `TensorProto`s, HTTP/2.
    Grpc { max_message_bytes: usize },
}

impl TfTransport {
    pub fn name(&self) -> &'static str {
        match self {
            TfTransport::Rest { .. } => "rest",
            TfTransport::Grpc { .. } => "grpc",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionPolicy {
    Latest(NonZeroUsize),
    Specific(Vec<u64>),
    All,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OnnxBackend {
    pub repository: PathBuf,
    pub version_policy: VersionPolicy,
    /// Models to serve from the repository; empty = all.
    pub models: Vec<String>,
    pub warmup: u32,
    /// Runs of each warm-up sample (`MODEL/warmup/*.json`) per session.
    pub warmup_requests: u32,
    pub instances: NonZeroUsize,
    pub poll_interval: Duration,
    /// The MLflow registry the models come from (`repository` is then its local cache).
    pub mlflow: Option<crate::MlflowSource>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The model name clients use; `*` is the catch-all route.
    pub name: Arc<str>,
    /// Lower-case header whose value pins a client to a variant.
    pub sticky_header: Option<String>,
    pub variants: Vec<VariantConfig>,
    pub rollout: Option<RolloutConfig>,
    /// Drift detection of this model's variants; `None`: off (no sampling, no cost).
    pub drift: Option<DriftConfig>,
    /// Prediction quality from feedback; `None`: off (nothing remembered per request).
    pub quality: Option<QualityConfig>,
    /// Triton sequence affinity (always on; these are its bounds).
    pub sequences: SequenceConfig,
    /// Content-routing rules, tried in order before the weighted split.
    pub rules: Vec<crate::RuleConfig>,
}

/// The bounds of a model's table of live Triton sequences (`sequence_id` →
/// variant and endpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceConfig {
    /// A sequence with no request for this long is released (Triton's
    /// `max_sequence_idle_microseconds` is the backend's own).
    pub idle_timeout: Duration,
    /// Live sequences at most; a new one past it is refused (503).
    pub max_active: NonZeroUsize,
}

impl Default for SequenceConfig {
    fn default() -> Self {
        SequenceConfig {
            idle_timeout: DEFAULT_SEQUENCE_IDLE_TIMEOUT,
            max_active: NonZeroUsize::new(DEFAULT_MAX_SEQUENCES).expect("non-zero"),
        }
    }
}

/// What a model predicts, for quality metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QualityTask {
    /// The prediction is the argmax class of `output`'s row.
    Classification,
    /// The prediction is the first element of `output`'s row.
    Regression,
}

/// Prediction quality from ground truth (docs/monitoring.md).
#[derive(Debug, Clone, PartialEq)]
pub struct QualityConfig {
    pub task: QualityTask,
    /// The output tensor predictions are read from.
    pub output: Arc<str>,
    /// Labelled predictions each variant's metrics cover (the most recent).
    pub window: NonZeroUsize,
    /// Answers remembered for joining feedback (request id → variant, version, prediction); the oldest go first.
    pub store: NonZeroUsize,
    /// Fleet mode: how long an answer stays in the fleet's Redis answer store, waiting for feedback.
    pub ttl: Duration,
}

/// How long an answer waits for feedback in the fleet's Redis store when not given.
pub const DEFAULT_QUALITY_TTL: Duration = Duration::from_secs(3600);
/// Labelled predictions in a quality window when not given.
pub const DEFAULT_QUALITY_WINDOW: usize = 1000;
/// Answers remembered for feedback when not given.
pub const DEFAULT_QUALITY_STORE: usize = 100_000;

/// Live drift detection of a model's inputs and outputs against a reference profile (docs/monitoring.md).
#[derive(Debug, Clone, PartialEq)]
pub struct DriftConfig {
    /// The reference profile (`switchyard profile`), resolved against the config file's directory.
    pub reference: PathBuf,
    /// Fraction of requests in (0, 1] whose inputs and outputs are summarised.
    pub sample_rate: f64,
    /// Rows each variant's live window summarises; a shift is fully in the window `window` rows after it starts.
    pub window: NonZeroUsize,
    /// Rows a window needs before it is scored.
    pub min_samples: usize,
    /// PSI above which a variant counts as drifted (alerts, canary judge).
    pub threshold: f64,
}

/// Fraction of requests sampled for drift when not given.
pub const DEFAULT_DRIFT_SAMPLE_RATE: f64 = 0.1;
/// Rows in a drift window when not given.
pub const DEFAULT_DRIFT_WINDOW: usize = 2000;
/// Rows a drift window needs before it is scored, when not given.
pub const DEFAULT_DRIFT_MIN_SAMPLES: usize = 200;
/// PSI threshold when not given: 0.2 is the usual "significant shift" line.
pub const DEFAULT_DRIFT_THRESHOLD: f64 = 0.2;

/// Automated canary analysis of one model (docs/operations.md).
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutConfig {
    pub baseline: Arc<str>,
    pub canary: Arc<str>,
    /// Canary weight (percent) at each step, ascending, ending at 100 to promote.
    pub steps: Vec<f64>,
    /// How often the canary is judged.
    pub interval: Duration,
    /// Largest tolerated canary error rate above the baseline's (absolute, 0.01 = one point).
    pub max_error_rate_increase: f64,
    /// Largest tolerated canary p99 latency as a multiple of the baseline's.
    pub max_p99_ratio: f64,
    /// Canary requests needed in a step before it is judged.
    pub min_requests: u64,
    /// Largest tolerated canary drift (PSI, data or prediction); needs `monitoring.drift`.
    pub max_drift: Option<f64>,
    /// Largest tolerated canary accuracy below the baseline's (absolute); needs
    /// `monitoring.quality` and `min_requests` labelled answers on both.
    pub max_accuracy_drop: Option<f64>,
}

/// How often a rollout is judged when not given.
pub const DEFAULT_ROLLOUT_INTERVAL: Duration = Duration::from_secs(30);
/// Canary error-rate margin over the baseline when not given.
pub const DEFAULT_MAX_ERROR_RATE_INCREASE: f64 = 0.01;
/// Canary p99 margin over the baseline when not given.
pub const DEFAULT_MAX_P99_RATIO: f64 = 1.5;
/// Canary requests per step when not given.
pub const DEFAULT_MIN_REQUESTS: u64 = 100;

#[derive(Debug, Clone, PartialEq)]
pub struct VariantConfig {
    pub name: Arc<str>,
    pub backend: Arc<str>,
    /// Model name sent to the backend; `None` keeps the client's.
    pub model: Option<Arc<str>>,
    /// Model version sent to the backend; `None` keeps the client's.
    pub version: Option<Arc<str>>,
    pub weight: f64,
    pub batching: Option<BatchingConfig>,
    /// Percent of the model's requests mirrored here, off the request path.
    pub shadow_percent: Option<f64>,
    /// Response caching of this variant (the model's policy applied); `None` = not cached.
    pub cache: Option<CachePolicy>,
    /// `false`: the model may answer the same input differently; never cached.
    pub deterministic: bool,
    /// TF Serving version labels this variant answers besides its own name.
    pub labels: Vec<Arc<str>>,
    /// Inputs completed from a feature store before the model runs.
    pub features: Option<crate::FeaturesConfig>,
    /// How TorchServe clients' JSON bodies map to this variant's tensors; `None`:
    /// only a `kind: torchserve` backend serves TorchServe clients (bodies unchanged).
    pub torchserve: Option<TorchServeTranslation>,
}

/// `variants[].torchserve`: how a TorchServe client's body becomes the one
/// input tensor of a tensor model (embedded ONNX, a V2 server), and how the
/// answer's tensor is written back (docs/torchserve.md).
#[derive(Debug, Clone, PartialEq)]
pub struct TorchServeTranslation {
    /// JSON pointer (RFC 6901) to the nested list in the body; "" is the whole body.
    pub input: String,
    /// `None`: the answer is the bare nested list; `Some(key)`: `{"key": list}`.
    pub output: Option<String>,
    /// Whether a body is the whole tensor or one row of a batched input.
    pub body: TorchServeBody,
    /// The output that answers; `None`: the model's only output.
    pub output_tensor: Option<String>,
}

/// What one TorchServe body holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TorchServeBody {
    /// The whole input tensor: its shape is the nesting, batch dimension included.
    Tensor,
    /// One row: the tensor is `[1, ...nesting]`, and the answer's batch dimension
    /// (one row) is dropped when written.
    Row,
}

/// In-process L1 bound when not given (256 MiB).
pub const DEFAULT_L1_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Largest cached answer when not given (1 MiB).
pub const DEFAULT_MAX_ENTRY_BYTES: usize = 1024 * 1024;
/// Per-call Redis deadline when not given: past it the request goes on without L2.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(20);
/// Redis connect deadline when not given (connects run off the request path).
pub const DEFAULT_REDIS_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Consecutive Redis failures that open the breaker when not given.
pub const DEFAULT_BREAKER_FAILURES: u32 = 5;
/// How long an open breaker skips Redis before one probe, when not given.
pub const DEFAULT_BREAKER_COOLDOWN: Duration = Duration::from_secs(2);
/// Prefix of every Redis key Switchyard writes when not given.
pub const DEFAULT_REDIS_KEY_PREFIX: &str = "switchyard";

/// The cache tiers every cached variant shares (docs/cache.md).
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// Bytes of answers kept in process; 0 turns L1 off.
    pub l1_max_bytes: u64,
    pub redis: Option<RedisConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RedisConfig {
    /// `redis://` URLs: one for standalone, the seed nodes for cluster.
    pub urls: Vec<String>,
    pub cluster: bool,
    /// Deadline of each GET/SET; past it the cache is skipped for that request.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Consecutive failures (errors or timeouts) that open the breaker.
    pub breaker_failures: u32,
    /// How long the open breaker skips Redis before letting one probe through.
    pub breaker_cooldown: Duration,
    pub key_prefix: String,
}

/// Per-variant opt-in (a model-level `cache` applies to its deterministic variants).
#[derive(Debug, Clone, PartialEq)]
pub struct CachePolicy {
    pub ttl: Duration,
    /// Larger answers are returned but not cached.
    pub max_entry_bytes: usize,
    /// Also store in / read from Redis (needs `cache.redis`).
    pub l2: bool,
}

/// Dynamic batching of one variant (DESIGN §4).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchingConfig {
    /// Most rows (first-dimension entries) merged into one backend call.
    pub max_batch_size: NonZeroUsize,
    /// Longest a request waits for companions before its batch is sent.
    pub max_queue_delay: Duration,
    /// Batch sizes sent as soon as they can be formed (ascending).
    pub preferred_batch_sizes: Vec<usize>,
    /// Requests queued at once; more are rejected at once with 503.
    pub max_queue_size: usize,
    /// Deadline of a queued request that names none (`timeout` parameter, µs).
    pub default_timeout: Option<Duration>,
    /// Priority levels; level 1 is served first.
    pub priority_levels: NonZeroUsize,
    /// Level of requests that name none (1-based).
    pub default_priority: usize,
    /// Size the wait from the observed arrival rate (within `max_queue_delay`).
    pub adaptive: bool,
    /// Batches of this queue running at once.
    pub max_concurrent_batches: NonZeroUsize,
}

/// Longest wait for a batch to fill when not given.
pub const DEFAULT_MAX_QUEUE_DELAY: Duration = Duration::from_millis(1);
/// Batches of one queue running at once (two keep a two-core box busy).
pub const DEFAULT_MAX_CONCURRENT_BATCHES: usize = 2;
/// Requests a batch queue holds before it rejects.
pub const DEFAULT_MAX_QUEUE_SIZE: usize = 1024;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    /// Dotted field path, e.g. `models.mlp.variants[1].weight`.
    pub path: String,
    /// 1-based; 0 when the location is unknown (a missing field).
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{} ({}:{}): {}", self.path, self.line, self.column, self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a config file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub source_name: String,
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} error(s)", self.source_name, self.errors.len())?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl ValidatedConfig {
    /// One line for `switchyard validate`.
    pub fn summary(&self) -> String {
        let variants: usize = self.models.values().map(|m| m.variants.len()).sum();
        let graphs = match self.graphs.len() {
            0 => String::new(),
            n => format!(", {n} graph(s)"),
        };
        format!(
            "{} model route(s), {} variant(s), {} backend(s){graphs}; data http {}",
            self.models.len(),
            variants,
            self.backends.len(),
            self.listeners.http.address
        )
    }
}

/// `Retry-After` of a request refused for overload.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Longest wait for a concurrency slot.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(1);
/// Highest limit an adaptive limit may reach when `max_limit` is not set.
pub const DEFAULT_MAX_ADAPTIVE_LIMIT: usize = 200;
/// How long in-flight requests get after SIGTERM before the process exits anyway.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// Where an old process hands its listeners to `serve --upgrade`.
pub const DEFAULT_UPGRADE_SOCKET: &str = "/tmp/switchyard-upgrade.sock";

/// Concurrency limits and load shedding (`admission`).
#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionConfig {
    pub retry_after: Duration,
    /// Priority of a request that names none; 1 is the highest, larger is lower.
    pub default_priority: u64,
    /// By route name (a key of `models`, or `*`).
    pub models: BTreeMap<Arc<str>, ConcurrencyLimit>,
    /// By backend name.
    pub backends: BTreeMap<Arc<str>, ConcurrencyLimit>,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            retry_after: DEFAULT_RETRY_AFTER,
            default_priority: 1,
            models: BTreeMap::new(),
            backends: BTreeMap::new(),
        }
    }
}

/// One concurrency limit with its bounded wait queue.
#[derive(Debug, Clone, PartialEq)]
pub struct ConcurrencyLimit {
    /// The limit; for an adaptive one, where it starts.
    pub limit: NonZeroUsize,
    /// Present when the limit follows the latency it measures (gradient).
    pub adaptive: Option<AdaptiveRange>,
    /// Requests that may wait beyond the limit; more are refused at once.
    pub queue: usize,
    pub queue_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdaptiveRange {
    pub min: NonZeroUsize,
    pub max: NonZeroUsize,
}

/// Drain on SIGTERM and listener hand-over (`lifecycle`).
#[derive(Debug, Clone, PartialEq)]
pub struct Lifecycle {
    pub drain_timeout: Duration,
    pub upgrade_socket: PathBuf,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle { drain_timeout: DEFAULT_DRAIN_TIMEOUT, upgrade_socket: PathBuf::from(DEFAULT_UPGRADE_SOCKET) }
    }
}
