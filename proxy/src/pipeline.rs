//! The protocol-independent part of an inference: pick the variant, run the
//! request (through the variant's batch queue or straight to its backend),
//! record the outcome. Listeners decode before and encode after; everything
//! in between is here, so every protocol routes, batches and counts alike.

use std::time::Duration;

use http::HeaderName;
use switchyard_runtime::{InferRequest, InferResponse};

use crate::cache::{CacheStatus, Directive};
use crate::respond::ApiError;
use crate::routing::{RoutingTable, Selection, Variant};
use crate::shadow;

/// Picks the variant for a request; `header` reads a request header (HTTP) or metadata entry (gRPC).
pub fn select<'t, 'h>(
    table: &'t RoutingTable,
    model: &str,
    version: Option<&str>,
    header: impl Fn(&HeaderName) -> Option<&'h [u8]>,
) -> Result<Selection<'t>, ApiError> {
    let route = table.route(model)?;
    let override_variant = header(&table.override_header);
    let sticky = route.sticky_header.as_ref().and_then(&header);
    Ok(route.select(model, version, override_variant, sticky)?)
}

#[derive(Clone)]
pub struct Executed {
    pub response: InferResponse,
    /// Rows of the batch the request ran in, when it went through a batch queue.
    pub batch_rows: Option<usize>,
    /// Where the answer came from, when the variant is cached (`x-switchyard-cache`).
    pub cache: Option<CacheStatus>,
}

impl Executed {
    pub fn with_cache(self, status: CacheStatus) -> Executed {
        Executed { cache: Some(status), ..self }
    }
}

/// Runs a decoded, validated request on the selected variant, mirroring it
/// to the route's shadow variants when sampled. A cached variant answers from
/// its cache when it can (after routing, before the batch queue); `cache`
/// is what the client's `cache-control` asks.
pub async fn execute(
    sel: &Selection<'_>,
    model: &str,
    version: Option<&str>,
    req: InferRequest,
    cache: Directive,
) -> Result<Executed, ApiError> {
    if sel.route.shadows.is_empty() {
        return cached(sel, model, req, cache).await;
    }
    let mirrors = shadow::start(sel.route, sel.index, model, version, &req);
    let result = cached(sel, model, req, cache).await;
    if let Ok(done) = &result {
        mirrors.primary_answered(&done.response);
    }
    result
}

async fn cached(
    sel: &Selection<'_>,
    model: &str,
    req: InferRequest,
    directive: Directive,
) -> Result<Executed, ApiError> {
    match &sel.variant.cache {
        None => run(sel, req).await,
        Some(c) => c.serve(sel.variant.backend.as_ref(), &sel.target, model, req, directive, |req| run(sel, req)).await,
    }
}

async fn run(sel: &Selection<'_>, req: InferRequest) -> Result<Executed, ApiError> {
    let variant = sel.variant;
    let queue = match (&variant.batcher, &variant.other_versions) {
        (Some(b), _) if b.target == sel.target => Some(b.clone()),
        (Some(_), Some(others)) => others.get(&variant.backend, &sel.target),
        _ => None,
    };
    match queue {
        Some(b) => {
            let (response, rows) = b.submit(req).await?;
            Ok(Executed { response, batch_rows: Some(rows), cache: None })
        }
        None => {
            Ok(Executed { response: variant.backend.infer(&sel.target, req).await?, batch_rows: None, cache: None })
        }
    }
}

/// Records one answered request: status counter, latency histograms and the
/// live stats the control plane reads (5xx counts against the variant).
pub fn record(variant: &Variant, status: u16, total: Duration, backend: Duration) {
    variant.metrics.count(status);
    variant.stats.record(total, status >= 500);
    variant.metrics.request_duration.observe(total.as_secs_f64());
    if !backend.is_zero() {
        variant.metrics.backend_duration.observe(backend.as_secs_f64());
    }
}

/// Names of the routes (sorted) with no variant of weight > 0 whose backend is
/// ready: `/ready`, `/v2/health/ready` and gRPC `ServerReady` all answer from it.
/// Each backend is asked once, however many variants share it.
pub async fn unready_routes(table: &RoutingTable) -> Vec<String> {
    let mut checked: Vec<(usize, bool)> = Vec::new();
    let mut unready = Vec::new();
    for route in table.all_routes() {
        let mut ok = false;
        for v in route.variants.iter().filter(|v| v.weight > 0.0) {
            let key = std::sync::Arc::as_ptr(&v.backend) as *const () as usize;
            let ready = match checked.iter().find(|(k, _)| *k == key) {
                Some((_, r)) => *r,
                None => {
                    let r = v.backend.ready().await;
                    checked.push((key, r));
                    r
                }
            };
            if ready {
                ok = true;
                break;
            }
        }
        if !ok {
            unready.push(route.name.to_string());
        }
    }
    unready.sort();
    unready
}
