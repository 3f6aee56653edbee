//! Switchyard's data plane: the pingora HTTP listener and the tonic gRPC
//! listener speaking KServe V2, one request lifecycle both share
//! (`pipeline`), routing and A/B selection over a swappable snapshot,
//! batching, caching, shadow traffic and metrics.

pub mod admin;
pub mod admission;
pub mod batch;
pub mod cache;
pub mod error;
pub mod grpc;
pub mod headers;
pub mod http;
pub mod limit;
pub mod metrics;
pub mod outcome;
pub mod pipeline;
pub mod respond;
pub mod routing;
pub mod shadow;

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
pub fn run(cfg: &ValidatedConfig, table: Arc<ArcSwap<RoutingTable>>, metrics: Metrics) -> ! {
    let conf = ServerConf {
        threads: cfg.listeners.http.threads.get(),
        grace_period_seconds: Some(GRACE_PERIOD_SECS),
        graceful_shutdown_timeout_seconds: Some(SHUTDOWN_TIMEOUT_SECS),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let plane =
        HttpListener::new(table, metrics.clone(), cfg.limits.clone(), cfg.listeners.http.default_upstream.clone());
    let mut data = pingora_proxy::http_proxy_service_with_name(&server.configuration, plane, "switchyard-data-http");
    data.add_tcp(&cfg.listeners.http.address.to_string());
    server.add_service(data);

    if let Some(addr) = cfg.listeners.metrics {
        let mut svc = Service::new("switchyard-metrics".into(), HttpServer::new_app(admin::MetricsApp { metrics }));
        svc.threads = Some(1);
        svc.add_tcp(&addr.to_string());
        server.add_service(svc);
    }
    tracing::info!(
        http = %cfg.listeners.http.address,
        metrics = ?cfg.listeners.metrics,
        default_upstream = ?cfg.listeners.http.default_upstream.as_ref().map(|u| u.to_string()),
        "switchyard listening"
    );
    server.run_forever()
}
