//! Raw YAML → `ValidatedConfig`: the entry point, which reads the file, runs
//! every section's checks in dependency order and reports all their errors at
//! once, each pointed at its line:column.
//!
//! Module map (edges point at what a module uses; no cycles):
//! `mod` → `process`, `backends`, `cache`, `models`, `graph`, `reliability`, `fields`;
//! `graph` → `fields`;
//! `reliability` → `fields`;
//! `models` → `cache`, `rules`, `torchserve`, `fields`; `rules` → `fields`; `torchserve` → `fields`; `backends` → `upstream`, `tls`, `fields`;
//! `process` → `upstream`, `tls`, `fields`; `security` → `tls`, `fields`; `tls` → `fields`; `cache` → `fields`; `upstream` → `fields`;
//! `fields` is the leaf.

mod backends;
mod cache;
mod fields;
mod graph;
mod models;
mod monitoring;
mod process;
mod reliability;
mod rules;
mod security;
mod sources;
mod tls;
mod torchserve;
mod upstream;

use std::path::Path;
use std::sync::Arc;

use crate::raw::{self, RawConfig};
use crate::validated::*;

pub use fields::parse_duration;
use fields::Errors;
pub use security::{check_permission, parse_sha256};

pub fn parse(text: &str, base_dir: &Path) -> Result<ValidatedConfig, ConfigError> {
    let raw = raw::read(text).map_err(|e| ConfigError { source_name: "<config>".into(), errors: vec![e] })?;
    let mut errs = Errors::default();
    let cfg = build(raw, base_dir, &mut errs);
    if errs.0.is_empty() {
        Ok(cfg)
    } else {
        errs.0.sort_by_key(|e| (e.line, e.column));
        Err(ConfigError { source_name: "<config>".into(), errors: errs.0 })
    }
}

/// Sections are checked in the order they refer to each other: backends take
/// their defaults from `limits` and `runtime`, models refer to backends and
/// to the cache tiers.
fn build(raw: RawConfig, base_dir: &Path, errs: &mut Errors) -> ValidatedConfig {
    // The cgroup CPU quota when one is set, not the host's core count.
    let cores = crate::cpus::available_cpus();
    let ts_management_at = raw.listeners.torchserve_management.as_ref().map(|t| *fields::loc(&t.value.backend));
    let listeners = process::listeners(errs, raw.listeners, base_dir, cores);
    let limits = process::limits(errs, &raw.limits);
    let (routing, default_sticky) = process::routing(errs, &raw.routing);
    let runtime = process::runtime(errs, raw.runtime, base_dir, cores);
    let logging = process::logging(errs, raw.logging);
    let backend_names: Vec<String> = raw.backends.keys().cloned().collect();
    let backends = backends::backends(
        errs,
        raw.backends,
        base_dir,
        &backends::Defaults { timeout: limits.backend_timeout, pool_threads: runtime.pool_threads.get() },
    );
    let cache = cache::cache_config(errs, &raw.cache);
    let control = process::control(errs, &raw.control);
    let raw_model_names: Vec<String> = raw.models.keys().cloned().collect();
    let graph_names = raw.graphs.keys().cloned().collect();
    let models = models::models(
        errs,
        raw.models,
        &models::Context { backends: &backends, cache: &cache, default_sticky, base_dir, graphs: &graph_names },
    );
    let model_names = raw_model_names.into_iter().collect();
    let graphs = graph::graphs(errs, raw.graphs, &model_names);
    let resolver = process::resolver(errs, &raw.resolver);
    let mut server = process::server(errs, &raw.server);
    if let Some(b) = &raw.server.metadata_from {
        match backends.get(b.value.as_str()) {
            Some(BackendConfig::V2Http(_) | BackendConfig::V2Grpc(_)) => {
                server.metadata_from = Some(Arc::from(b.value.as_str()))
            }
            Some(BackendConfig::TfServing(_)) => errs.at(
                "server.metadata_from",
                fields::loc(b),
                format!(
                    "backend `{}` is TF Serving, which has no V2 server metadata: metadata_from names a v2-http or v2-grpc backend",
                    b.value
                ),
            ),
            Some(BackendConfig::Onnx(_)) => errs.at(
                "server.metadata_from",
                fields::loc(b),
                format!(
                    "backend `{}` is the embedded runtime: metadata_from names a v2-http or v2-grpc backend",
                    b.value
                ),
            ),
            Some(BackendConfig::TorchServe(_)) => errs.at(
                "server.metadata_from",
                fields::loc(b),
                format!(
                    "backend `{}` is TorchServe, which has no V2 server metadata: metadata_from names a v2-http or v2-grpc backend",
                    b.value
                ),
            ),
            // Its own errors are reported where it is defined.
            None if backend_names.contains(&b.value) => {}
            None => errs.at(
                "server.metadata_from",
                fields::loc(b),
                format!("unknown backend `{}` (defined: {})", b.value, backend_names.join(", ")),
            ),
        }
    }
    if let (Some(t), Some(at)) = (&listeners.torchserve_management, &ts_management_at) {
        let path = "listeners.torchserve_management.backend";
        match backends.get(&t.backend) {
            Some(BackendConfig::TorchServe(b)) if b.management.is_some() => {}
            Some(BackendConfig::TorchServe(_)) => errs.at(
                path,
                at,
                format!("backend `{}` has no `management` URL to relay the management API to", t.backend),
            ),
            Some(other) => errs.at(
                path,
                at,
                format!(
                    "backend `{}` is {}: the management API is relayed to a torchserve backend",
                    t.backend,
                    other.kind()
                ),
            ),
            None if backend_names.iter().any(|n| **n == *t.backend) => {}
            None => {
                errs.at(path, at, format!("unknown backend `{}` (defined: {})", t.backend, backend_names.join(", ")))
            }
        }
    }
    let admission = reliability::admission(errs, &raw.admission, &models, &backends);
    let lifecycle = reliability::lifecycle(errs, &raw.lifecycle, base_dir);
    let tracing = raw.tracing.as_ref().map(|t| monitoring::tracing(errs, "tracing", t));
    let auth = raw.auth.map(|a| security::auth(errs, a.value, base_dir));
    let rate_limits = raw.rate_limits.map(|r| security::rate_limits(errs, r.value)).unwrap_or_default();
    let access_log = security::access_log(errs, raw.access_log, base_dir);
    ValidatedConfig {
        listeners,
        limits,
        routing,
        runtime,
        logging,
        backends,
        models,
        graphs,
        cache,
        resolver,
        control,
        admission,
        lifecycle,
        tracing,
        auth,
        rate_limits,
        access_log,
        server,
    }
}

impl ValidatedConfig {
    /// Reads and validates a config file; relative paths in it resolve against its directory.
    pub fn load(path: &Path) -> Result<ValidatedConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source_name: path.display().to_string(),
            errors: vec![FieldError {
                path: "<file>".into(),
                line: 0,
                column: 0,
                message: format!("cannot read: {e}"),
            }],
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base).map_err(|mut e| {
            e.source_name = path.display().to_string();
            e
        })
    }

    /// Validates YAML text; `base_dir` anchors relative paths.
    pub fn parse(text: &str, base_dir: &Path) -> Result<ValidatedConfig, ConfigError> {
        parse(text, base_dir)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn errors(yaml: &str) -> Vec<FieldError> {
        parse(yaml, Path::new(".")).expect_err("config should be rejected").errors
    }

    const GOOD: &str = r#"
backends:
  a:
    kind: v2-http
    endpoints: ["http://127.0.0.1:9000"]
  b:
    kind: v2-http
    endpoints: ["http://127.0.0.1:9010/prefix/"]
    timeout: 250ms
models:
  mlp:
    sticky_header: X-User-Id
    variants:
      - { name: stable, backend: a, weight: 90 }
      - { name: canary, backend: b, weight: 10, model: mlp2, version: 2 }
"#;

    #[test]
    fn good_config_gets_defaults_and_types() {
        let c = parse(GOOD, Path::new(".")).unwrap();
        assert_eq!(c.listeners.http.address.to_string(), DEFAULT_HTTP_ADDRESS);
        assert_eq!(c.listeners.metrics.unwrap().to_string(), DEFAULT_METRICS_ADDRESS);
        assert_eq!(c.listeners.control.unwrap().address.to_string(), DEFAULT_CONTROL_ADDRESS);
        let m = &c.models["mlp"];
        assert_eq!(m.sticky_header.as_deref(), Some("x-user-id"));
        assert_eq!(m.variants[1].version.as_deref(), Some("2"));
        assert_eq!(m.variants[1].model.as_deref(), Some("mlp2"));
        let BackendConfig::V2Http(b) = &c.backends["b"] else { panic!() };
        assert_eq!(b.timeout, Duration::from_millis(250));
        assert_eq!(b.endpoints.fixed().unwrap()[0].base_path, "/prefix");
        assert_eq!(c.limits.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
    }

    #[test]
    fn an_https_default_upstream_gets_tls_settings() {
        let c = parse("listeners:\n  http:\n    default_upstream: 'https://h:1'\n", Path::new(".")).unwrap();
        assert!(c.listeners.http.default_upstream.unwrap().tls);
        assert_eq!(c.listeners.http.default_upstream_tls, Some(ClientTlsConfig::default()));
        let yaml = "listeners:\n  http:\n    default_upstream: 'https://10.0.0.7:1'\n    default_upstream_tls: {server_name: up.internal}\n";
        let tls = parse(yaml, Path::new(".")).unwrap().listeners.http.default_upstream_tls.unwrap();
        assert_eq!(tls.server_name.as_deref(), Some("up.internal"));
        let c = parse("listeners:\n  http:\n    default_upstream: 'http://h:1'\n", Path::new(".")).unwrap();
        assert_eq!(c.listeners.http.default_upstream_tls, None);
    }

    #[test]
    fn empty_file_is_a_valid_config_with_defaults() {
        let c = parse("", Path::new(".")).unwrap();
        assert!(c.models.is_empty());
    }

    /// One row per class of error: the error whose path is given must be
    /// there, at that line:column, saying that. Reading errors (bad YAML, an
    /// unknown field, a wrong type) stop at the first; the rest are collected.
    #[test]
    fn table_of_rejections() {
        const B: &str = "backends:\n  b: {kind: v2-http, endpoints: ['http://h:1']}\n";
        let m = |variants: &str| format!("{B}models:\n  m:\n    variants:\n{variants}");
        #[rustfmt::skip]
        let cases: Vec<(&str, String, &str, u64, u64, &str)> = vec![
            // Reading the file.
            ("yaml syntax", "models: [\n".into(), "<yaml>", 1, 9, "expected mapping start"),
            ("unknown top-level field", "bogus: 1\n".into(), "<yaml>", 1, 1, "unknown field `bogus`"),
            ("unknown nested field", "listeners:\n  http:\n    adress: 1.2.3.4:5\n".into(), "<yaml>", 3, 5, "unknown field `adress`"),
            ("wrong type", "limits:\n  max_body_bytes: lots\n".into(), "<yaml>", 2, 19, "invalid u64"),
            ("missing backend kind", "backends:\n  b:\n    endpoints: ['http://h:1']\n".into(), "<yaml>", 3, 5, "missing field `kind`"),
            // Process-wide sections.
            ("bad address", "listeners:\n  http:\n    address: nope\n".into(), "listeners.http.address", 3, 14, "`nope` is not an address"),
            ("bad default upstream", "listeners:\n  http:\n    default_upstream: \"http://h\\tx:80\"\n".into(), "listeners.http.default_upstream", 3, 23, "`http://h\\tx:80`: the authority `h\\tx:80` contains a control character"),
            ("zero count", "listeners:\n  http:\n    threads: 0\n".into(), "listeners.http.threads", 3, 14, "must be at least 1"),
            ("zero grpc limit", "listeners:\n  grpc:\n    max_message_bytes: 0\n".into(), "listeners.grpc.max_message_bytes", 3, 24, "must be between 1 and"),
            ("bad duration", "limits:\n  backend_timeout: 5 parsecs\n".into(), "limits.backend_timeout", 2, 20, "unknown unit `parsecs`"),
            ("zero duration", "limits:\n  header_read_timeout: 0s\n".into(), "limits.header_read_timeout", 2, 24, "must be greater than zero"),
            ("zero sequence idle", format!("{B}models:\n  m:\n    sequences: {{idle_timeout: 0s}}\n    variants: [{{name: a, backend: b}}]\n"), "models.m.sequences.idle_timeout", 5, 31, "must be greater than zero"),
            ("zero sequence cap", format!("{B}models:\n  m:\n    sequences:\n      max_active: 0\n    variants: [{{name: a, backend: b}}]\n"), "models.m.sequences.max_active", 6, 19, "must be at least 1"),
            ("bad header name", "routing:\n  sticky_header: x user\n".into(), "routing.sticky_header", 2, 18, "`x user` is not a valid HTTP header name"),
            ("unknown execution provider", "runtime:\n  onnx:\n    execution_provider: tpu\n".into(), "runtime.onnx.execution_provider", 3, 25, "unknown execution provider `tpu`"),
            ("unknown log format", "logging:\n  format: xml\n".into(), "logging.format", 2, 11, "unknown log format `xml`"),
            ("empty server name", "server:\n  name: ''\n".into(), "server.name", 2, 9, "must be 1 to 256 printable characters"),
            ("server metadata from an unknown backend", format!("{B}server:\n  metadata_from: nope\n"), "server.metadata_from", 4, 18, "unknown backend `nope` (defined: b)"),
            ("server metadata from the embedded runtime", "backends:\n  e: {kind: onnx, repository: .}\nserver:\n  metadata_from: e\n".into(), "server.metadata_from", 4, 18, "is the embedded runtime"),
            ("zero warm-up requests", "backends:\n  b:\n    kind: onnx\n    repository: .\n    warmup_requests: 0\n".into(), "backends.b.warmup_requests", 5, 22, "must be 1 to 1000"),
            // Backends: the shape of each kind (read in the second pass, locations kept).
            ("unknown kind", "backends:\n  b:\n    kind: grpc9\n".into(), "backends.b.kind", 3, 11, "unknown backend kind `grpc9` (expected v2-http, v2-grpc, tfserving, onnx or torchserve)"),
            ("unknown field in v2-http", "backends:\n  b:\n    kind: v2-http\n    endpoints: ['http://h:1']\n    bogus: 1\n".into(), "backends.b.bogus", 5, 5, "unknown field `bogus`, expected one of endpoints,"),
            ("wrong type in v2-http", "backends:\n  b:\n    kind: v2-http\n    endpoints: ['http://h:1']\n    pool_size: lots\n".into(), "backends.b.pool_size", 5, 16, "invalid u64"),
            ("field of another kind", "backends:\n  b:\n    kind: v2-grpc\n    endpoints: ['h:1']\n    binary: always\n".into(), "backends.b.binary", 5, 5, "unknown field `binary`"),
            ("wrong type in v2-grpc", "backends:\n  b: {kind: v2-grpc, endpoints: ['h:1'], max_message_bytes: big}\n".into(), "backends.b.max_message_bytes", 2, 61, "invalid u64"),
            ("unknown field in onnx, kind last", "backends:\n  b:\n    repository: .\n    endpoints: ['http://h:1']\n    kind: onnx\n".into(), "backends.b.endpoints", 4, 5, "unknown field `endpoints`, expected one of repository,"),
            ("wrong type in onnx", "backends:\n  b:\n    kind: onnx\n    repository: .\n    warmup: many\n".into(), "backends.b.warmup", 5, 13, "invalid u64"),
            ("unknown nested field", "backends:\n  b:\n    kind: onnx\n    repository: .\n    version_policy: {latest: 1, newest: 2}\n".into(), "backends.b.version_policy", 5, 33, "unknown field `newest`"),
            ("unknown field in forward_headers", "backends:\n  b:\n    kind: v2-http\n    endpoints: ['http://h:1']\n    forward_headers: {allowed: [a]}\n".into(), "backends.b.forward_headers", 5, 23, "unknown field `allowed`, expected one of allow, deny"),
            // Backends: values.
            ("default upstream CA missing", "listeners:\n  http:\n    default_upstream: 'https://h:1'\n    default_upstream_tls: {ca: /nonexistent/ca.pem}\n".into(), "listeners.http.default_upstream_tls.ca", 4, 32, "/nonexistent/ca.pem"),
            ("default upstream key without cert", "listeners:\n  http:\n    default_upstream: 'https://h:1'\n    default_upstream_tls: {key: /nonexistent/k.pem}\n".into(), "listeners.http.default_upstream_tls.cert", 4, 33, "needs its `cert`"),
            ("default upstream bad server name", "listeners:\n  http:\n    default_upstream: 'https://h:1'\n    default_upstream_tls: {server_name: 'a b'}\n".into(), "listeners.http.default_upstream_tls.server_name", 4, 41, "`a b` is not a DNS name or IP address"),
            ("TLS for an http default upstream", "listeners:\n  http:\n    default_upstream: 'http://h:1'\n    default_upstream_tls: {server_name: h}\n".into(), "listeners.http.default_upstream_tls", 4, 27, "write https://"),
            ("TLS without a default upstream", "listeners:\n  http:\n    default_upstream_tls: {server_name: h}\n".into(), "listeners.http.default_upstream_tls", 3, 27, "there is no default_upstream"),
            ("jwks over plain http", "auth:\n  jwt:\n    jwks_url: 'http://idp:80/jwks'\n".into(), "auth.jwt.jwks_url", 3, 15, "over https://"),
            ("jwks refresh too short", "auth:\n  jwt:\n    jwks_url: 'https://idp/jwks'\n    jwks_refresh: 1s\n".into(), "auth.jwt.jwks_refresh", 4, 19, "at least 10s"),
            ("mixed schemes", "backends:\n  b:\n    kind: v2-http\n    endpoints: ['https://h:1', 'http://h:2']\n".into(), "backends.b.endpoints[1]", 4, 32, "a backend uses one transport"),
            ("missing CA file", "backends:\n  b:\n    kind: v2-grpc\n    endpoints: ['h:1']\n    tls: {ca: /nonexistent/ca.pem}\n".into(), "backends.b.tls.ca", 5, 15, "/nonexistent/ca.pem"),
            ("client cert without key", "backends:\n  b:\n    kind: v2-grpc\n    endpoints: ['h:1']\n    tls: {cert: /nonexistent/c.pem}\n".into(), "backends.b.tls.key", 5, 17, "needs its `key`"),
            ("control character in an endpoint", "backends:\n  b:\n    kind: v2-http\n    endpoints: [\"http://ba\\x01d:80\"]\n".into(), "backends.b.endpoints[0]", 4, 17, "`http://ba\\u{1}d:80`: the authority `ba\\u{1}d:80` contains a control character"),
            ("whitespace in a grpc endpoint", "backends:\n  b:\n    kind: v2-grpc\n    endpoints: ['ba d:80']\n".into(), "backends.b.endpoints[0]", 4, 17, "contains whitespace"),
            ("grpc endpoint with a path", "backends:\n  b:\n    kind: v2-grpc\n    endpoints: ['h:1/x']\n".into(), "backends.b.endpoints[0]", 4, 17, "without a path"),
            ("no endpoints", "backends:\n  b:\n    kind: v2-http\n".into(), "backends.b.endpoints", 3, 5, "needs at least one endpoint"),
            ("unknown binary mode", "backends:\n  b:\n    kind: v2-http\n    endpoints: ['http://h:1']\n    binary: sometimes\n".into(), "backends.b.binary", 5, 13, "unknown binary mode `sometimes`"),
            ("onnx without repository", "backends:\n  b:\n    kind: onnx\n".into(), "backends.b.repository", 3, 5, "needs `repository`"),
            ("onnx repository not a directory", "backends:\n  b:\n    kind: onnx\n    repository: no/such/dir\n".into(), "backends.b.repository", 4, 17, "is not a directory"),
            ("two version policies", "backends:\n  b:\n    kind: onnx\n    repository: .\n    version_policy: {latest: 1, all: true}\n".into(), "backends.b.version_policy", 5, 21, "give exactly one of"),
            ("bad forwarded header name", "backends:\n  b:\n    kind: v2-http\n    endpoints: ['http://h:1']\n    forward_headers:\n      allow: [authorization, \"x\\ttenant\"]\n".into(), "backends.b.forward_headers.allow[1]", 6, 30, "`x\\ttenant` is not a valid HTTP header name"),
            ("header allowed and denied", "backends:\n  b:\n    kind: v2-grpc\n    endpoints: ['h:1']\n    forward_headers:\n      allow: [authorization, X-Tenant]\n      deny: [cookie, x-tenant]\n".into(), "backends.b.forward_headers.deny[1]", 7, 22, "`x-tenant` is both allowed and denied"),
            // Models.
            ("unknown variant backend", "models:\n  m:\n    variants:\n      - name: a\n        backend: ghost\n".into(), "models.m.variants[0].backend", 5, 18, "unknown backend `ghost` (no backends are defined)"),
            ("negative weight", m("      - {name: a, backend: b, weight: -1}\n"), "models.m.variants[0].weight", 6, 39, "weight must be a non-negative number, got -1"),
            ("zero weight sum", m("      - {name: a, backend: b, weight: 0}\n"), "models.m.variants", 6, 7, "variant weights must have a positive sum"),
            ("no variants", format!("{B}models:\n  m:\n    variants: []\n"), "models.m.variants", 5, 15, "a model needs at least one variant"),
            ("duplicate variant", m("      - {name: a, backend: b}\n      - {name: a, backend: b}\n"), "models.m.variants[1].name", 7, 16, "duplicate variant name `a`"),
            ("label that is another variant's name", m("      - {name: a, backend: b, labels: [x, b2]}\n      - {name: b2, backend: b}\n"), "models.m.variants[0].labels", 6, 43, "label `b2` is another variant's name"),
            ("label of two variants", m("      - {name: a, backend: b, labels: [x]}\n      - {name: c, backend: b, labels: [x]}\n"), "models.m.variants[1].labels", 7, 40, "label `x` is already variant `a`'s"),
            ("label with a slash", m("      - {name: a, backend: b, labels: [x/y]}\n"), "models.m.variants[0].labels", 6, 40, "label `x/y` must be a non-empty name without `/`"),
            ("shadow with a default weight", m("      - {name: a, backend: b}\n      - {name: s, backend: b, shadow_percent: 10}\n"), "models.m.variants[1].weight", 7, 9, "its weight must be 0 (it defaults to 1"),
            ("shadow percent out of range", m("      - {name: a, backend: b}\n      - {name: s, backend: b, weight: 0, shadow_percent: 150}\n"), "models.m.variants[1].shadow_percent", 7, 58, "must be in (0, 100], got 150"),
            ("cache on a non-deterministic variant", m("      - {name: a, backend: b, deterministic: false, cache: {ttl: 1s}}\n"), "models.m.variants[0].cache", 6, 60, "never cached"),
            ("l2 without redis", m("      - {name: a, backend: b, cache: {ttl: 1s, l2: true}}\n"), "models.m.variants[0].cache.l2", 6, 38, "needs a `cache.redis` section"),
            ("zero batch size", m("      - name: a\n        backend: b\n        batching: {max_batch_size: 0}\n"), "models.m.variants[0].batching.max_batch_size", 8, 36, "must be at least 1"),
            ("preferred size above max", m("      - name: a\n        backend: b\n        batching: {max_batch_size: 4, preferred_batch_sizes: [8]}\n"), "models.m.variants[0].batching.preferred_batch_sizes", 8, 19, "preferred batch size 8"),
            ("default priority out of range", m("      - name: a\n        backend: b\n        batching: {max_batch_size: 4, priority_levels: 2, default_priority: 3}\n"), "models.m.variants[0].batching.default_priority", 8, 77, "between 1 and priority_levels (2)"),
            ("rollout names an unknown variant", format!("{B}models:\n  m:\n    variants:\n      - {{name: a, backend: b}}\n    rollout: {{baseline: a, canary: c, steps: [50, 100]}}\n"), "models.m.rollout.canary", 7, 36, "no variant named `c`"),
            ("rollout steps not ascending", format!("{B}models:\n  m:\n    variants:\n      - {{name: a, backend: b}}\n      - {{name: c, backend: b, weight: 0}}\n    rollout: {{baseline: a, canary: c, steps: [50, 10]}}\n"), "models.m.rollout.steps", 8, 46, "steps must be ascending"),
            // Cache tiers.
            ("bad redis url", "cache:\n  redis: {url: 'http://x:1'}\n".into(), "cache.redis.url", 2, 16, "is not a redis://host:port URL"),
            ("neither redis url nor cluster", "cache:\n  redis: {timeout: 1ms}\n".into(), "cache.redis", 2, 10, "give exactly one of `url`"),
            ("redis key prefix with whitespace", "cache:\n  redis: {url: 'redis://x:1', key_prefix: 'a b'}\n".into(), "cache.redis.key_prefix", 2, 43, "without whitespace"),
            // Fleet mode.
            ("fleet without redis", "control:\n  fleet: {fleet: prod}\n".into(), "control.fleet", 2, 10, "`redis`"),
            ("fleet without a name", "control:\n  fleet: {redis: 'redis://r:6379'}\n".into(), "control.fleet", 2, 10, "`fleet`"),
            ("fleet redis not a URL", "control:\n  fleet: {redis: 'r:6379', fleet: prod}\n".into(), "control.fleet.redis", 2, 18, "is not a redis://host:port URL"),
            ("fleet name with a space", "control:\n  fleet: {redis: 'redis://r:1', fleet: 'a b'}\n".into(), "control.fleet.fleet", 2, 40, "letters, digits"),
            ("lease shorter than three timeouts", "control:\n  fleet: {redis: 'redis://r:1', fleet: a, timeout: 1s, lease_ttl: 2s}\n".into(), "control.fleet.lease_ttl", 2, 67, "at least 3 × `timeout`"),
            ("unknown fleet field", "control:\n  fleet: {redis: 'redis://r:1', fleet: a, leader: me}\n".into(), "<yaml>", 2, 43, "unknown field `leader`"),
        ];
        for (what, yaml, path, line, column, says) in &cases {
            let errs = errors(yaml);
            let hit = errs.iter().find(|e| e.path == *path);
            let hit = hit.unwrap_or_else(|| panic!("{what}: no error at `{path}`: {errs:?}"));
            assert_eq!((hit.line, hit.column), (*line, *column), "{what}: wrong location in {hit}");
            assert!(hit.message.contains(says), "{what}: `{}` does not say `{says}`", hit.message);
        }
    }

    #[test]
    fn fleet_mode_is_off_unless_configured_and_gets_defaults() {
        assert_eq!(parse("", Path::new(".")).unwrap().control.fleet, None);
        let c =
            parse("control:\n  fleet: {redis: 'redis://10.0.0.5:6379/2', fleet: gw-prod}\n", Path::new(".")).unwrap();
        let f = c.control.fleet.unwrap();
        assert_eq!((f.redis.as_str(), f.name.as_str()), ("redis://10.0.0.5:6379/2", "gw-prod"));
        assert_eq!(
            (f.poll_interval, f.lease_ttl, f.timeout),
            (DEFAULT_FLEET_POLL_INTERVAL, DEFAULT_FLEET_LEASE_TTL, DEFAULT_FLEET_TIMEOUT)
        );
        let c = parse(
            "control:\n  fleet: {redis: 'redis://r:1', fleet: a, poll_interval: 100ms, lease_ttl: 2s, timeout: 200ms}\n",
            Path::new("."),
        )
        .unwrap();
        let f = c.control.fleet.unwrap();
        assert_eq!(
            (f.poll_interval, f.lease_ttl, f.timeout),
            (Duration::from_millis(100), Duration::from_secs(2), Duration::from_millis(200))
        );
    }

    #[test]
    fn all_errors_are_reported_at_once() {
        let errs = errors(
            "listeners:\n  http:\n    address: nope\nlimits:\n  backend_timeout: 3\nmodels:\n  m:\n    variants:\n      - {name: a, backend: ghost}\n",
        );
        assert_eq!(errs.len(), 3, "{errs:?}");
    }

    #[test]
    fn grpc_listener_and_backend() {
        let c = parse("", Path::new(".")).unwrap();
        let g = c.listeners.grpc.expect("on by default");
        assert_eq!(g.address.to_string(), DEFAULT_GRPC_ADDRESS);
        assert_eq!(g.max_message_bytes, DEFAULT_GRPC_MAX_MESSAGE_BYTES);
        let c = parse("listeners:\n  grpc: {enabled: false}\n", Path::new(".")).unwrap();
        assert!(c.listeners.grpc.is_none());
        let c = parse(
            "listeners:\n  grpc: {address: 127.0.0.1:9001, max_message_bytes: 1024}\nbackends:\n  t:\n    kind: v2-grpc\n    endpoints: ['127.0.0.1:8001', 'http://triton:8001']\n    timeout: 2s\n",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(c.listeners.grpc.unwrap().max_message_bytes, 1024);
        let BackendConfig::V2Grpc(b) = &c.backends["t"] else { panic!() };
        assert_eq!(b.endpoints.fixed().unwrap()[0].authority, "127.0.0.1:8001");
        assert_eq!(b.endpoints.fixed().unwrap()[1].authority, "triton:8001");
        assert_eq!(b.timeout, Duration::from_secs(2));
        assert_eq!(b.max_message_bytes, DEFAULT_GRPC_MAX_MESSAGE_BYTES);
    }

    #[test]
    fn cache_policies_resolve_per_variant() {
        let c = parse(
            "cache:\n  l1_max_bytes: 1024\n  redis: {url: 'redis://127.0.0.1:6379', timeout: 5ms}\nbackends:\n  b: {kind: v2-http, endpoints: ['http://h:1']}\nmodels:\n  m:\n    cache: {ttl: 30s, l2: true}\n    variants:\n      - {name: a, backend: b}\n      - {name: n, backend: b, deterministic: false}\n      - {name: o, backend: b, cache: {ttl: 1s, max_entry_bytes: 10}}\n",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(c.cache.l1_max_bytes, 1024);
        let r = c.cache.redis.as_ref().unwrap();
        assert_eq!((r.timeout, r.breaker_failures, r.cluster), (Duration::from_millis(5), 5, false));
        let v = &c.models["m"].variants;
        assert_eq!(v[0].cache, Some(CachePolicy { ttl: Duration::from_secs(30), max_entry_bytes: 1 << 20, l2: true }));
        assert_eq!(v[1].cache, None);
        assert!(!v[1].deterministic);
        assert_eq!(v[2].cache, Some(CachePolicy { ttl: Duration::from_secs(1), max_entry_bytes: 10, l2: false }));
        assert_eq!(parse("", Path::new(".")).unwrap().cache.l1_max_bytes, DEFAULT_L1_MAX_BYTES);

        let b = "backends:\n  b: {kind: v2-http, endpoints: ['http://h:1']}\n";
        for (yaml, needle) in [
            (format!("{b}models:\n  m:\n    variants:\n      - {{name: a, backend: b, cache: {{ttl: 1s, l2: true}}}}\n"), "variants[0].cache.l2"),
            (format!("{b}models:\n  m:\n    variants:\n      - {{name: a, backend: b, deterministic: false, cache: {{ttl: 1s}}}}\n"), "variants[0].cache"),
            (format!("{b}models:\n  m:\n    variants:\n      - {{name: a, backend: b, cache: {{ttl: 0s}}}}\n"), "cache.ttl"),
            ("cache:\n  redis: {url: 'http://x:1'}\n".to_string(), "cache.redis.url"),
            ("cache:\n  redis: {timeout: 1ms}\n".to_string(), "cache.redis"),
            ("cache:\n  redis: {cluster: []}\n".to_string(), "cache.redis.cluster"),
        ] {
            let errs = errors(&yaml);
            assert!(errs.iter().any(|e| e.path.contains(needle)), "{needle}: {errs:?}");
        }
    }

    #[test]
    fn the_torchserve_management_listener_names_a_torchserve_backend_with_a_management_url() {
        let ok = ValidatedConfig::parse(
            "listeners:\n  torchserve_management: {address: '127.0.0.1:9081', backend: ts}\nbackends:\n  ts: {kind: torchserve, endpoints: ['http://h:8080'], management: 'http://h:8081'}\n",
            Path::new("."),
        )
        .unwrap();
        let t = ok.listeners.torchserve_management.unwrap();
        assert_eq!((t.address.port(), &*t.backend), (9081, "ts"));
        for (backend, want) in [
            ("ts", "has no `management` URL"),
            ("v2", "is v2-http: the management API is relayed to a torchserve backend"),
            ("nope", "unknown backend `nope`"),
        ] {
            let errs = ValidatedConfig::parse(
                &format!("listeners:\n  torchserve_management: {{backend: {backend}}}\nbackends:\n  ts: {{kind: torchserve, endpoints: ['http://h:8080']}}\n  v2: {{kind: v2-http, endpoints: ['http://h:1']}}\n"),
                Path::new("."),
            )
            .unwrap_err()
            .errors;
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert_eq!(errs[0].path, "listeners.torchserve_management.backend");
            assert!(errs[0].message.contains(want), "{}", errs[0].message);
        }
    }
}
