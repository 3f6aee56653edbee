//! Switchyard's data plane: the pingora HTTP listener and the tonic gRPC
//! listener speaking KServe V2, one request lifecycle both share
//! (`pipeline`), routing and A/B selection over a swappable snapshot,
//! batching, caching, shadow traffic and metrics.

pub mod access_log;
pub mod admin;
pub mod auth;
pub mod batch;
pub mod cache;
pub mod error;
pub mod grpc;
pub mod headers;
pub mod http;
pub mod metrics;
pub mod monitor;
pub mod outcome;
pub mod pipeline;
pub mod ratelimit;
pub mod respond;
pub mod routing;
pub mod shadow;
pub mod shm;
pub mod tls;
pub mod trace;
pub mod triton;

use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora_core::apps::http_app::HttpServer;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::services::listening::Service;
use switchyard_config::ValidatedConfig;

pub use error::Error;
pub use http::HttpListener;
pub use metrics::Metrics;
pub use outcome::Outcome;
pub use routing::RoutingTable;

/// Seconds an old listener keeps serving after SIGTERM before shutdown starts.
const GRACE_PERIOD_SECS: u64 = 1;
/// Seconds in-flight requests get to finish during shutdown.
const SHUTDOWN_TIMEOUT_SECS: u64 = 10;

/// Starts the listeners and serves until the process is told to stop.
///
/// `table` is the published routing snapshot: whoever holds the other end
/// (the control plane) swaps it; requests load it once each.
/// What guards the data plane, shared by the HTTP and gRPC listeners.
#[derive(Clone, Default)]
pub struct Guards {
    /// Required credentials on every path but the probes; `None`: open.
    pub auth: Option<Arc<auth::Auth>>,
    pub limiter: Option<Arc<ratelimit::RateLimiter>>,
    /// `access_log.body_hash`.
    pub body_hash: bool,
}

/// `guards` apply to every data-plane request.
pub fn run(cfg: &ValidatedConfig, table: Arc<ArcSwap<RoutingTable>>, metrics: Metrics, guards: Guards) -> ! {
    let conf = ServerConf {
        threads: cfg.listeners.http.threads.get(),
        grace_period_seconds: Some(GRACE_PERIOD_SECS),
        graceful_shutdown_timeout_seconds: Some(SHUTDOWN_TIMEOUT_SECS),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let plane =
        HttpListener::new(table, metrics.clone(), cfg.limits.clone(), cfg.listeners.http.default_upstream.clone())
            .with_guards(guards);
    let mut data = pingora_proxy::http_proxy_service_with_name(&server.configuration, plane, "switchyard-data-http");
    // Kept for the process's life: their certificates reload while they live.
    let mut keep_tls = Vec::new();
    match &cfg.listeners.http.tls {
        None => data.add_tcp(&cfg.listeners.http.address.to_string()),
        Some(t) => {
            let server_tls = exit_on_err(tls::ServerTls::load(t, "listeners.http"));
            data.add_tls_with_settings(
                &cfg.listeners.http.address.to_string(),
                None,
                exit_on_err(server_tls.pingora_settings()),
            );
            keep_tls.push(server_tls);
        }
    }
    server.add_service(data);

    if let Some(addr) = cfg.listeners.metrics {
        let mut svc = Service::new("switchyard-metrics".into(), HttpServer::new_app(admin::MetricsApp { metrics }));
        svc.threads = Some(1);
        match &cfg.listeners.metrics_tls {
            None => svc.add_tcp(&addr.to_string()),
            Some(t) => {
                let server_tls = exit_on_err(tls::ServerTls::load(t, "listeners.metrics"));
                svc.add_tls_with_settings(&addr.to_string(), None, exit_on_err(server_tls.pingora_settings()));
                keep_tls.push(server_tls);
            }
        }
        server.add_service(svc);
    }
    tracing::info!(
        http = %cfg.listeners.http.address,
        metrics = ?cfg.listeners.metrics,
        default_upstream = ?cfg.listeners.http.default_upstream.as_ref().map(|u| u.to_string()),
        "switchyard listening"
    );
    let _keep_tls = keep_tls;
    server.run_forever()
}

/// A listener that cannot start stops the process with the reason (as a taken port does).
fn exit_on_err<T>(r: Result<T, String>) -> T {
    r.unwrap_or_else(|e| {
        eprintln!("switchyard: {e}");
        std::process::exit(1)
    })
}
