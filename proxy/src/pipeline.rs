//! The request lifecycle, once for every protocol: select the variant →
//! decode → cache → batch queue → backend (shadow mirrors beside it) →
//! encode → record. A listener supplies only what is protocol-specific — how
//! to read metadata, decode the request, tell that the client left and
//! encode the answer (`Exchange`) — and writes what `infer` returns. So every
//! protocol routes, caches, batches, times and counts alike, and a new
//! protocol is a codec plus a thin listener.

use std::future::Future;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue};
use switchyard_runtime::{InferRequest, InferResponse};

use crate::admission;
use crate::batch::BatchError;
use crate::cache::{CacheStatus, Directive};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::outcome::{Executed, Outcome};
use crate::respond;
use crate::routing::{RoutingTable, Selection, Variant};
use crate::shadow;

/// The protocol-specific half of one inference exchange with a client.
pub trait Exchange: Send {
    /// The protocol's encoded answer.
    type Encoded: Send;

    /// The client's request metadata: HTTP headers or gRPC metadata.
    fn metadata(&self) -> &HeaderMap;

    /// Reads (if need be) and decodes the request into the tensor model.
    fn decode(&mut self) -> impl Future<Output = Result<InferRequest, Error>> + Send;

    /// Resolves when the client has gone away; never, where the listener cannot tell.
    fn closed(&mut self) -> impl Future<Output = ()> + Send;

    /// Encodes a successful response in the client's format.
    fn encode(&mut self, response: InferResponse) -> Result<Self::Encoded, Error>;
}

/// What the lifecycle hands back to the listener to write.
pub struct Answer<E> {
    pub result: Result<E, Error>,
    /// `x-switchyard-variant`, once a variant was selected.
    pub variant: Option<HeaderValue>,
    pub batch_rows: Option<usize>,
    pub cache: Option<CacheStatus>,
    /// Time in Switchyard, the backend call excluded (`x-switchyard-overhead-us`).
    pub overhead: Duration,
}

/// Names an inference: the client's model and version, and its deadline.
#[derive(Clone, Copy, Debug)]
pub struct Call<'a> {
    pub model: &'a str,
    pub version: Option<&'a str>,
    /// The client's own deadline (gRPC `grpc-timeout`), enforced end to end.
    pub deadline: Option<Duration>,
    /// When the request arrived.
    pub start: Instant,
    /// The caller's priority (1 is the highest) where its identity sets one:
    /// the hook for authenticated principals. The request's own `priority`
    /// parameter wins; `None` and 0 mean `admission.default_priority`.
    pub priority: Option<u64>,
}

/// Runs one inference from selection to recording; see the module doc.
pub async fn infer<X: Exchange>(
    table: &RoutingTable,
    metrics: &Metrics,
    x: &mut X,
    call: Call<'_>,
) -> Answer<X::Encoded> {
    let _in_flight = InFlight::new(&metrics.in_flight);
    let sel = match select(table, call.model, call.version, x.metadata()) {
        Ok(s) => s,
        Err(e) => {
            let known_route = !matches!(e.kind, crate::error::ErrorKind::NotFound);
            metrics.count_unrouted(known_route.then_some(call.model), respond::http_status(&e));
            let overhead = call.start.elapsed();
            return Answer { result: Err(e), variant: None, batch_rows: None, cache: None, overhead };
        }
    };
    let _variant_in_flight = InFlight::new(&sel.variant.metrics.in_flight);
    // Admission before work: a saturated model or backend refuses before the body is read.
    let ticket = match table.admission.enter(&sel.route.name, &sel.variant.backend_name) {
        Ok(t) => t,
        Err(e) => {
            let total = call.start.elapsed();
            record(sel.variant, respond::http_status(&e), total, Duration::ZERO);
            return Answer {
                result: Err(e),
                variant: Some(sel.variant.header_value.clone()),
                batch_rows: None,
                cache: None,
                overhead: total,
            };
        }
    };
    // What the run learnt, kept for the answer and the record (the response itself moves on).
    let (mut batch_rows, mut cache, mut backend_time) = (None, None, Duration::ZERO);
    let result = async {
        let mut req = x.decode().await?;
        if let Some(forward) = sel.variant.backend.forwarding() {
            // Only what this backend sends on is copied (`runtime::backend::forward`).
            forward.apply(x.metadata(), &mut req.metadata);
            if !req.metadata.is_empty() {
                req.metadata.remove(&table.override_header);
            }
        }
        let id = req.id.clone();
        // `cache-control` matters only to a cached variant.
        let directive = match sel.variant.cache {
            Some(_) => Directive::from_header(x.metadata().get(http::header::CACHE_CONTROL).map(|v| v.as_bytes())),
            None => Directive::default(),
        };
        let priority = admission::request_priority(&req).or(call.priority);
        // Pinned where it is made: the run's future is large, and every move of it is a copy.
        // The slot wait is inside it, so a client that leaves or a deadline
        // that passes while queued never reaches the backend.
        let run = async {
            let mut permits = ticket.admit(priority).await?;
            let outcome = execute(&sel, call.model, call.version, req, directive).await;
            match &outcome {
                Ok(_) => permits.record(true),
                Err(e) if e.signals_overload() => permits.record(false),
                Err(_) => {}
            }
            outcome
        };
        tokio::pin!(run);
        let limited = async {
            match call.deadline {
                None => (&mut run).await,
                Some(d) => tokio::time::timeout(d, &mut run).await.unwrap_or_else(|_| Err(Error::deadline(d))),
            }
        };
        // A client that hangs up stops the wait: its queued work is dropped
        // and an unbatched backend call is cancelled.
        let executed = tokio::select! {
            // The answer first: no per-poll coin toss between the two.
            biased;
            r = limited => r,
            () = x.closed() => Err(Error::client_closed()),
        }?;
        (batch_rows, cache, backend_time) = (executed.batch_rows, executed.cache, executed.backend_time);
        let mut resp = executed.response;
        resp.model_name = call.model.to_string();
        if id.is_some() {
            resp.id = id;
        }
        x.encode(resp)
    }
    .await;
    let total = call.start.elapsed();
    let status = result.as_ref().map_or_else(respond::http_status, |_| 200);
    record(sel.variant, status, total, backend_time);
    Answer {
        result,
        variant: Some(sel.variant.header_value.clone()),
        batch_rows,
        cache,
        overhead: total.saturating_sub(backend_time),
    }
}

/// Picks the variant for a request from its model, version and metadata
/// (sticky key and variant override are read from it).
pub fn select<'t>(
    table: &'t RoutingTable,
    model: &str,
    version: Option<&str>,
    metadata: &HeaderMap,
) -> Result<Selection<'t>, Error> {
    let route = table.route(model)?;
    let header = |h: &HeaderName| metadata.get(h).map(|v| v.as_bytes());
    let override_variant = header(&table.override_header);
    let sticky = route.sticky_header.as_ref().and_then(header);
    Ok(route.select(model, version, override_variant, sticky)?)
}

/// Runs a decoded, validated request on the selected variant, mirroring it
/// to the route's shadow variants when sampled. A cached variant answers from
/// its cache when it can (after routing, before the batch queue); `cache`
/// is what the client's `cache-control` asks.
async fn execute(
    sel: &Selection<'_>,
    model: &str,
    version: Option<&str>,
    req: InferRequest,
    cache: Directive,
) -> Outcome {
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

async fn cached(sel: &Selection<'_>, model: &str, req: InferRequest, directive: Directive) -> Outcome {
    match &sel.variant.cache {
        None => run(sel, req).await,
        Some(c) => c.serve(sel.variant.backend.as_ref(), &sel.target, model, req, directive, |req| run(sel, req)).await,
    }
}

/// The backend call itself, through the variant's batch queue when it batches;
/// `backend_time` is the time of that call alone.
async fn run(sel: &Selection<'_>, req: InferRequest) -> Outcome {
    let variant = sel.variant;
    let queue = match (&variant.batcher, &variant.other_versions) {
        (Some(b), _) if b.target == sel.target => Some(b.clone()),
        (Some(_), Some(others)) => others.get(&variant.backend, &sel.target),
        _ => None,
    };
    match queue {
        Some(b) => {
            // The queue wait is Switchyard's time; the batch's backend call is the backend's.
            let (response, rows, execution) = b.submit(req).await?;
            Ok(Executed { response, batch_rows: Some(rows), cache: None, backend_time: execution })
        }
        None => {
            let t0 = Instant::now();
            let response = variant.backend.infer(&sel.target, req).await?;
            Ok(Executed::from_backend(response, t0.elapsed()))
        }
    }
}

/// Records one answered request: status counter, latency histograms and the
/// live stats the control plane reads (5xx counts against the variant).
/// The backend histogram sees only requests that made a backend call.
pub fn record(variant: &Variant, status: u16, total: Duration, backend: Duration) {
    variant.metrics.count(status);
    variant.stats.record(total, status >= 500);
    variant.metrics.request_duration.observe(total.as_secs_f64());
    if !backend.is_zero() {
        variant.metrics.backend_duration.observe(backend.as_secs_f64());
    }
}

impl From<BatchError> for Error {
    fn from(e: BatchError) -> Error {
        match e {
            BatchError::QueueFull { .. } => Error::overloaded(1, e.to_string()),
            BatchError::Expired { .. } => Error::new(crate::error::ErrorKind::DeadlineExceeded, e.to_string()),
            BatchError::BadParameter(ref p) => Error::bad_field(p.clone(), e.to_string()),
            BatchError::Closed => Error::unavailable(e.to_string()),
            BatchError::Backend(b) => b.into(),
        }
    }
}

/// Decrements the in-flight gauge however the request ends.
struct InFlight<'a>(&'a prometheus::IntGauge);

impl<'a> InFlight<'a> {
    fn new(g: &'a prometheus::IntGauge) -> Self {
        g.inc();
        InFlight(g)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
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

/// What keeps the process from being ready besides its routes: background
/// tasks that died (a panicked batch scheduler or reload task).
pub fn dead_tasks() -> Vec<String> {
    if !switchyard_stats::tasks::any_panicked() {
        return Vec::new();
    }
    switchyard_stats::tasks::panicked().into_iter().map(|p| format!("{} ({})", p.task, p.message)).collect()
}
