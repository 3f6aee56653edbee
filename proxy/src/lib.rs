//! Switchyard's data plane: the pingora HTTP listener and the tonic gRPC
//! listener speaking KServe V2, one request lifecycle both share
//! (`pipeline`), routing and A/B selection over a swappable snapshot,
//! batching, caching, shadow traffic and metrics.

pub mod access_log;
pub mod admin;
pub mod admission;
pub mod auth;
pub mod batch;
pub mod breaker;
pub mod cache;
pub mod error;
pub mod features;
pub mod feedback;
pub mod graph;
pub mod grpc;
pub mod guards;
pub mod headers;
pub mod http;
pub mod lifecycle;
pub mod limit;
pub mod metrics;
pub mod monitor;
pub mod outcome;
pub mod pipeline;
pub mod protocol;
pub mod ratelimit;
pub mod respond;
pub mod routing;
pub mod sequence;
pub mod shadow;
pub mod shm;
pub mod tfrelay;
pub mod tfserving;
pub mod tls;
pub mod torchserve;
pub mod trace;
pub mod triton;

use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora_core::apps::http_app::HttpServer;
use pingora_core::listeners::{L4BufferSettings, ListenerConfig};
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::services::listening::Service;
use switchyard_config::ValidatedConfig;

pub use error::Error;
pub use guards::Guards;
pub use http::HttpListener;
pub use metrics::Metrics;
pub use outcome::Outcome;
pub use routing::RoutingTable;

/// Starts the listeners and serves until the process is told to stop.
///
/// `table` is the published routing snapshot: whoever holds the other end
/// (the control plane) swaps it; requests load it once each. `guards` apply
/// to every data-plane request. `grpc`, when present, is served beside HTTP
/// and drains and upgrades with it. With `upgrade`, the listening sockets are
/// taken over from the running old process (`serve --upgrade`, see `lifecycle`).
pub fn run(
    cfg: &ValidatedConfig,
    table: Arc<ArcSwap<RoutingTable>>,
    metrics: Metrics,
    guards: Guards,
    grpc: Option<grpc::GrpcService>,
    upgrade: bool,
) -> ! {
    // Pingora waits this long after its listeners stop before it cuts what is
    // left; `lifecycle::watch` exits sooner once nothing is in flight.
    let drain = cfg.lifecycle.drain_timeout;
    let conf = ServerConf {
        threads: cfg.listeners.http.threads.get(),
        grace_period_seconds: Some(drain.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(1),
        upgrade_sock: cfg.lifecycle.upgrade_socket.to_string_lossy().into_owned(),
        ..ServerConf::default()
    };
    let opt = Opt { upgrade, ..Opt::default() };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();
    lifecycle::watch(server.watch_execution_phase(), drain);

    let guards_auth = guards.auth.clone();
    let plane = exit_on_err(
        HttpListener::new(table, metrics.clone(), cfg.limits.clone(), cfg.listeners.http.default_upstream.clone())
            .with_upstream_tls(cfg.listeners.http.default_upstream_tls.as_ref()),
    )
    .with_guards(guards);
    let app = lifecycle::GuardedApp::new(
        pingora_proxy::http_proxy(&server.configuration, plane),
        lifecycle::ConnectionLimits {
            header_read_timeout: cfg.limits.header_read_timeout,
            idle_timeout: cfg.limits.idle_timeout,
            max_header_bytes: cfg.limits.max_header_bytes,
            max_connections: cfg.limits.max_connections.map(|n| n.get()).or_else(lifecycle::default_max_connections),
        },
    );
    let mut data = Service::new("switchyard-data-http".into(), app);
    // Kept for the process's life: their certificates reload while they live.
    let mut keep_tls = Vec::new();
    match &cfg.listeners.http.tls {
        // Plaintext reads need no L4 buffer in front of pingora's own (the
        // request head's and the body's): without one an idle keep-alive
        // connection holds a few KiB instead of 64 KiB more (M1).
        None => data.add_listener(
            ListenerConfig::tcp(cfg.listeners.http.address.to_string()).l4_buffer(L4BufferSettings::default().read(0)),
        ),
        Some(t) => {
            let server_tls = exit_on_err(tls::ServerTls::load(t, "listeners.http"));
            data.add_tls_with_settings(
                &cfg.listeners.http.address.to_string(),
                None,
                exit_on_err(tls::pingora_settings(&server_tls)),
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
                svc.add_tls_with_settings(&addr.to_string(), None, exit_on_err(tls::pingora_settings(&server_tls)));
                keep_tls.push(server_tls);
            }
        }
        server.add_service(svc);
    }
    if let Some(g) = grpc {
        server.add_service(g);
    }
    if let Some(t) = &cfg.listeners.torchserve_management {
        server.add_service(exit_on_err(torchserve_management_service(&server, cfg, t, guards_auth)));
    }
    tracing::info!(
        http = %cfg.listeners.http.address,
        metrics = ?cfg.listeners.metrics,
        default_upstream = ?cfg.listeners.http.default_upstream.as_ref().map(|u| u.to_string()),
        upgrade,
        "switchyard listening"
    );
    let _keep_tls = keep_tls;
    server.run_forever()
}

/// `listeners.torchserve_management`: a proxy of its own to the backend's management URL.
fn torchserve_management_service(
    server: &Server,
    cfg: &ValidatedConfig,
    t: &switchyard_config::TorchServeManagementListener,
    auth: Option<Arc<auth::Auth>>,
) -> Result<Service<pingora_proxy::HttpProxy<http::torchserve_management::ManagementProxy>>, String> {
    let Some(switchyard_config::BackendConfig::TorchServe(b)) = cfg.backends.get(&t.backend) else {
        return Err(format!("listeners.torchserve_management: backend `{}` is not a torchserve backend", t.backend));
    };
    let management = b
        .management
        .clone()
        .ok_or_else(|| format!("listeners.torchserve_management: backend `{}` has no management URL", t.backend))?;
    let app = http::torchserve_management::ManagementProxy::new(
        t.backend.clone(),
        management,
        b.management_tls.as_ref(),
        auth,
    )?;
    let mut svc =
        Service::new("switchyard-torchserve-management".into(), pingora_proxy::http_proxy(&server.configuration, app));
    svc.threads = Some(1);
    svc.add_tcp(&t.address.to_string());
    Ok(svc)
}

/// A listener that cannot start stops the process with the reason (as a taken port does).
fn exit_on_err<T>(r: Result<T, String>) -> T {
    r.unwrap_or_else(|e| {
        eprintln!("switchyard: {e}");
        std::process::exit(1)
    })
}
