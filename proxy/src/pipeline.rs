//! The request lifecycle, once for every protocol: select the variant →
//! decode → cache → batch queue → backend (shadow mirrors beside it) →
//! encode → record. A request of a Triton sequence goes back, once decoded,
//! to the variant its sequence was opened on (`sequence`) and skips cache,
//! batch queue and mirrors. A listener supplies only what is protocol-specific — how
//! to read metadata, decode the request, tell that the client left and
//! encode the answer (`Exchange`) — and writes what `infer` returns. So every
//! protocol routes, caches, batches, times and counts alike, and a new
//! protocol is a codec plus a thin listener.

use std::borrow::Cow;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue};
use switchyard_runtime::backend::affinity::Affinity;
use switchyard_runtime::{InferRequest, InferResponse};

use crate::admission;
use crate::auth::{Action, Principal};
use crate::batch::BatchError;
use crate::cache::{CacheStatus, Directive};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::outcome::{Executed, Outcome};
use crate::protocol::{Param, Protocol};
use crate::ratelimit::RateLimiter;
use crate::respond;
use crate::routing::rules::{Facts, Parameters, Rule, Target, Verdict};
use crate::routing::{RoutingTable, Selection, Variant};
use crate::sequence;
use crate::shadow;
use crate::trace;

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

    /// The request's size in bytes once `decode` has read it, where the
    /// protocol did not say it up front (`Call::input_bytes`).
    fn body_len(&self) -> Option<u64> {
        None
    }

    /// Encodes a successful response in the client's format.
    fn encode(&mut self, response: InferResponse) -> Result<Self::Encoded, Error>;

    /// Reads the request far enough for `parameter` to answer (the body,
    /// where parameters travel in it), before typed decoding; `decode` then
    /// uses what was read. Called at most once, and only for a model whose
    /// content-routing rules match on request parameters, so no other
    /// request pays for it. The default reads nothing.
    fn read_parameters(&mut self) -> impl Future<Output = Result<(), Error>> + Send {
        std::future::ready(Ok(()))
    }

    /// A request parameter as content-routing rules see it (V2 `parameters`,
    /// TF Serving's `signature_name`): `None` when absent, not read yet, or
    /// when the protocol has none.
    fn parameter(&self, _name: &str) -> Option<Param<'_>> {
        None
    }

    /// Told which variant serves the request once routing decided, before
    /// `decode`: a protocol whose decoding depends on the model (TF Serving
    /// REST types its body by the model's signature) learns it here.
    fn routed(&mut self, _routed: &Routed<'_>) {}
}

/// Routing's decision as `Exchange::routed` sees it.
pub struct Routed<'a> {
    pub selection: &'a Selection<'a>,
    /// The model the selection was made for: the client's, or a content-routing rule's target.
    pub model: &'a str,
    pub version: Option<&'a str>,
    /// The request parameters the deciding content-routing rule matched on:
    /// routing used them (a TF Serving `signature_name` that names a model, not a signature).
    pub matched_parameters: &'a [Arc<str>],
    /// Those of the target model's own rule, when a redirected request matched one too.
    pub also_matched: &'a [Arc<str>],
}

impl Routed<'_> {
    /// Whether a deciding rule matched on parameter `name`.
    pub fn matched_parameter(&self, name: &str) -> bool {
        self.matched_parameters.iter().chain(self.also_matched).any(|p| p.as_ref() == name)
    }
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
    /// The content-routing rule (of the client's model) that routed the request, for the access log.
    pub rule: Option<Arc<str>>,
}

/// Names an inference: the client's model and version, and its deadline.
#[derive(Clone, Copy, Debug)]
pub struct Call<'a> {
    /// The front end the request arrived on (content-routing rules match on it).
    pub protocol: Protocol,
    /// The request's path: the HTTP path, or the gRPC method's (`/package.Service/Method`);
    /// `None` where there is none (a graph step).
    pub path: Option<&'a str>,
    pub model: &'a str,
    pub version: Option<&'a str>,
    /// A variant the protocol itself names (a TF Serving version label):
    /// chosen before weights, whatever `routing.allow_override` says.
    pub variant: Option<&'a str>,
    /// The client's own deadline (gRPC `grpc-timeout`), enforced end to end.
    pub deadline: Option<Duration>,
    /// When the request arrived.
    pub start: Instant,
    /// The caller's priority (1 is the highest) where the listener knows one
    /// beside the principal's; `None`: the principal's `priority`. It is the
    /// best the request's own `priority` parameter may claim
    /// (`admission::effective_priority`); none at all: `admission.default_priority`.
    pub priority: Option<u64>,
    /// Who asks, when authentication is on (`None`: every request may do anything).
    pub principal: Option<&'a Principal>,
    /// The rate limits, when configured.
    pub limiter: Option<&'a RateLimiter>,
    /// The client's address: its rate-limit key when there is no principal.
    pub client: Option<IpAddr>,
    /// The request's size when known before reading it (Content-Length, a gRPC message).
    pub input_bytes: Option<u64>,
}

impl Call<'_> {
    /// Whose bucket the request is charged to: the principal, else the client's address.
    fn rate_key(&self) -> Cow<'_, str> {
        match (self.principal, self.client) {
            (Some(p), _) => Cow::Borrowed(&p.name),
            (None, Some(ip)) => Cow::Owned(ip.to_string()),
            (None, None) => Cow::Borrowed("anonymous"),
        }
    }

    /// Charges the request to its rate limits before anything is read (429 when over).
    pub async fn admit(&self) -> Result<(), Error> {
        match self.limiter {
            Some(rl) => rl.admit(&self.rate_key(), self.model, self.input_bytes.unwrap_or(0)).await,
            None => Ok(()),
        }
    }

    /// The caller's priority: `priority`, else the principal's.
    pub fn caller_priority(&self) -> Option<u64> {
        self.priority.or_else(|| self.principal.and_then(|p| p.priority))
    }

    /// Authorization (403) then rate limits (429), the lifecycle's guards before routing.
    pub async fn guard(&self) -> Result<(), Error> {
        authorize(self.principal, self.model, self.version, Action::Infer)?;
        self.admit().await
    }
}

/// Runs one inference from selection to recording; see the module doc.
pub async fn infer<X: Exchange>(
    table: &RoutingTable,
    metrics: &Metrics,
    x: &mut X,
    call: Call<'_>,
) -> Answer<X::Encoded> {
    let _in_flight = InFlight::new(&metrics.in_flight);
    let chosen = match call.guard().await {
        Ok(()) => route(table, x, &call).await,
        Err(e) => Err(e),
    };
    let Choice { selection: mut sel, redirect, rules } = match chosen {
        Ok(c) => {
            c.count();
            c
        }
        Err(e) => {
            // Labelled by model only when it names a route: refused clients cannot grow the label set.
            let known_route = table.route(call.model).is_ok();
            metrics.count_unrouted(known_route.then_some(call.model), respond::http_status(&e));
            let overhead = call.start.elapsed();
            return Answer { result: Err(e), variant: None, batch_rows: None, cache: None, overhead, rule: None };
        }
    };
    // The model whose variants serve: the client's, or the one a rule sent the request to
    // (cache keys, mirrors and sequences are that model's).
    let model = redirect.unwrap_or(call.model);
    let rule = rules[0].map(|r| r.name.clone());
    x.routed(&Routed {
        selection: &sel,
        model,
        version: call.version,
        matched_parameters: rules[0].map_or(&[], |r| r.parameter_names()),
        also_matched: rules[1].map_or(&[], |r| r.parameter_names()),
    });
    let mut variant_in_flight = InFlight::new(&sel.variant.metrics.in_flight);
    // Admission before work: a saturated model or backend refuses before the body is read.
    let refused = |sel: &Selection<'_>, e: Error| {
        let total = call.start.elapsed();
        record(sel.variant, respond::http_status(&e), total, Duration::ZERO);
        Answer {
            result: Err(e),
            variant: Some(sel.variant.header_value.clone()),
            batch_rows: None,
            cache: None,
            overhead: total,
            rule: rule.clone(),
        }
    };
    let mut ticket = match table.admission.enter(&sel.route.name, &sel.variant.backend_name) {
        Ok(t) => t,
        Err(e) => return refused(&sel, e),
    };
    // Sampled requests only; with tracing off the snapshot has no tracer and nothing is timed.
    let trace = table.tracer.as_ref().and_then(|t| t.begin(x.metadata(), call.start));
    let mut marks = Marks::default();
    let mark = |m: &mut Option<Instant>| {
        if trace.is_some() {
            *m = Some(Instant::now());
        }
    };
    mark(&mut marks.routed);
    // What the run learnt, kept for the answer and the record (the response itself moves on).
    let (mut batch_rows, mut cache, mut backend_time) = (None, None, Duration::ZERO);
    let decoded = async {
        let req = x.decode().await?;
        mark(&mut marks.decoded);
        // A body of unknown size (chunked) is charged its bytes once read: before the work.
        if let (Some(rl), None, Some(n)) = (call.limiter, call.input_bytes, x.body_len()) {
            if rl.counts_bytes() {
                rl.admit_bytes(&call.rate_key(), call.model, n).await?;
            }
        }
        // A Triton sequence stays on the variant (and endpoint) it was opened on.
        let placement = match sequence::params(&req)? {
            None => None,
            Some(seq) => Some(sel.route.sequences.place(model, &seq, &sel.variant.name)?),
        };
        Ok::<_, Error>((req, placement))
    }
    .await;
    if let Ok((_, Some(p))) = &decoded {
        if p.variant != sel.variant.name {
            let Some(idx) = sel.route.variants.iter().position(|v| v.name == p.variant) else {
                let e = Error::unavailable(format!(
                    "{} was opened on variant '{}', which model '{}' no longer has (config changed); \
                     its state cannot move: start the sequence again",
                    p.pin.label(),
                    p.variant,
                    sel.route.name
                ));
                return refused(&sel, e);
            };
            sel = sel.route.selection_of(idx, model, call.version);
            variant_in_flight = InFlight::new(&sel.variant.metrics.in_flight);
            ticket = match table.admission.enter(&sel.route.name, &sel.variant.backend_name) {
                Ok(t) => t,
                Err(e) => return refused(&sel, e),
            };
        }
    }
    let _variant_in_flight = variant_in_flight;
    let result = async {
        let (mut req, placement) = decoded?;
        // Inputs only checked (the V2 JSON fast path) for a variant that needs
        // them after all: a sequence moved the request, or it was read before
        // routing for a content rule. Built here, before anything reads them.
        if req.inputs_pending() && !relays_v2_json(&sel) {
            req = switchyard_runtime::codec::v2::build_request(req)?;
        }
        if let Some(forward) = sel.variant.backend.forwarding() {
            // Only what this backend sends on is copied (`runtime::backend::forward`).
            forward.apply(x.metadata(), &mut req.metadata);
            // Trace context reaches the backend whatever `forward_headers` says:
            // ours (the backend call as parent) when sampled, else the client's own.
            match &trace {
                Some(t) => {
                    req.metadata.insert(trace::TRACEPARENT, trace::traceparent(&t.trace_id, &t.backend_span, true));
                }
                None => {
                    if let Some(tp) = x.metadata().get(trace::TRACEPARENT) {
                        req.metadata.insert(trace::TRACEPARENT, tp.clone());
                    }
                }
            }
            if let Some(ts) = x.metadata().get(trace::TRACESTATE) {
                req.metadata.insert(trace::TRACESTATE, ts.clone());
            }
            if !req.metadata.is_empty() {
                req.metadata.remove(&table.override_header);
            }
        }
        // Features first: the cache key, the batch and the backend see the whole input.
        if let Some(f) = &sel.variant.features {
            req.raw_json = None;
            f.enrich(&mut req).await?;
        }
        let id = req.id.clone();
        // `cache-control` matters only to a cached variant.
        let directive = match sel.variant.cache {
            Some(_) => Directive::from_header(x.metadata().get(http::header::CACHE_CONTROL).map(|v| v.as_bytes())),
            None => Directive::default(),
        };
        let priority = admission::effective_priority(admission::request_priority(&req), call.caller_priority());
        // A graph route's steps need the client's metadata while the client is watched.
        let graph_metadata = sel.route.graph.as_ref().map(|_| x.metadata().clone());
        // A drift sample keeps the inputs (refcounted bytes) until the answer is in.
        let drift_inputs = match &sel.variant.drift {
            Some(d) if d.sample() => Some(req.inputs.clone()),
            _ => None,
        };
        // Pinned where it is made: the run's future is large, and every move of it is a copy.
        // The slot wait is inside it, so a client that leaves or a deadline
        // that passes while queued never reaches the backend.
        let run = async {
            let mut permits = ticket.admit(priority).await?;
            let outcome = match (&sel.route.graph, &placement) {
                (Some(g), _) => {
                    let caller = crate::routing::StepCaller { protocol: call.protocol, priority, client: call.client };
                    g.run(table, graph_metadata.unwrap_or_default(), req, caller).await
                }
                (None, None) => execute(&sel, model, call.version, req, directive).await,
                (None, Some(p)) => in_sequence(&sel, req, p).await,
            };
            match &outcome {
                Ok(_) => permits.record(true),
                Err(e) if e.signals_overload() => permits.record(false),
                Err(_) => {}
            }
            outcome
        };
        tokio::pin!(run);
        mark(&mut marks.executing);
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
        mark(&mut marks.executed);
        (batch_rows, cache, backend_time) = (executed.batch_rows, executed.cache, executed.backend_time);
        let mut resp = executed.response;
        if let (Some(d), Some(inputs)) = (&sel.variant.drift, drift_inputs) {
            d.submit(inputs, resp.outputs.clone());
        }
        // The backend's body goes to the client as is only while it says what
        // the answer says: same model name and id, not rebuilt by a graph or quality tap.
        // A body whose outputs were only checked is all there is of the answer
        // (no graph or quality tap on such a route): its model name and id are patched.
        if resp.outputs_pending() {
            switchyard_runtime::codec::v2::relabel_response(&mut resp, call.model, id.as_deref());
        } else if resp.raw_json.is_some()
            && (resp.model_name != call.model
                || (id.is_some() && resp.id != id)
                || sel.route.graph.is_some()
                || sel.route.quality.is_some())
        {
            resp.raw_json = None;
        }
        call.model.clone_into(&mut resp.model_name);
        if id.is_some() {
            resp.id = id;
        }
        if let Some(q) = &sel.route.quality {
            q.remember(&mut resp, x.metadata(), &sel.variant.name, sel.variant.version.as_ref(), &sel.variant.stats);
        }
        x.encode(resp)
    }
    .await;
    let total = call.start.elapsed();
    let status = result.as_ref().map_or_else(respond::http_status, |_| 200);
    record(sel.variant, status, total, backend_time);
    if let (Some(tracer), Some(t)) = (&table.tracer, trace) {
        tracer.finish(spans(t, &marks, &sel, call, status, batch_rows, cache, backend_time));
    }
    Answer {
        result,
        variant: Some(sel.variant.header_value.clone()),
        batch_rows,
        cache,
        overhead: total.saturating_sub(backend_time),
        rule,
    }
}

/// Whether a V2 JSON request on `sel` may go without its tensors: its body
/// checked in one pass (`codec::v2::check_request`) and sent to the backend
/// as the client wrote it, the backend's answer checked the same way and
/// relayed as it wrote it (`codec::v2::relabel_response` patches the model
/// name and id). The one place that decides; a request it refuses has its
/// tensors built before anything reads them (`infer`). Excluded, because each
/// reads or rewrites the tensors:
/// - a backend other than `v2-http`: the others encode the tensors (gRPC,
///   ONNX Runtime, TF Serving, TorchServe); `v2-http` itself builds them when
///   it speaks the binary extension to its server;
/// - `features`: adds inputs fetched from the feature store;
/// - `cache`: the key hashes the inputs' data, and a hit answers from stored outputs;
/// - batching (the variant's queue and its per-version queues): merges inputs
///   along the first dimension and splits the outputs;
/// - `drift`: samples input and output values;
/// - a graph route: its steps pass tensors between models;
/// - a quality tap: remembers the answer's outputs for feedback;
/// - shadows: a mirror's answer is compared with the primary's outputs (and a
///   mirror on another backend kind would need the inputs encoded).
///
/// Content-routing rules and sequences read parameters, headers and the path
/// only, which the check keeps. Shared memory, the binary extension and
/// binary outputs are the check's own business: `check_request` hands such
/// bodies to the full decode.
pub fn relays_v2_json(sel: &Selection<'_>) -> bool {
    let (v, route) = (sel.variant, sel.route);
    v.backend.kind() == "v2-http"
        && v.features.is_none()
        && v.cache.is_none()
        && v.batcher.is_none()
        && v.other_versions.is_none()
        && v.drift.is_none()
        && route.graph.is_none()
        && route.quality.is_none()
        && route.shadows.is_empty()
}

/// Routing's decision for one inference.
pub struct Choice<'t> {
    pub selection: Selection<'t>,
    /// The model a content-routing rule sent the request to, when it names another one.
    pub redirect: Option<&'t str>,
    /// The rules that decided: the client's model's, then the target model's own.
    pub rules: [Option<&'t Rule>; 2],
}

impl<'t> Choice<'t> {
    fn plain(selection: Selection<'t>) -> Choice<'t> {
        Choice { selection, redirect: None, rules: [None, None] }
    }

    /// Counts the request against the rules that routed it.
    pub fn count(&self) {
        self.rules.iter().flatten().for_each(|r| r.hit());
    }
}

/// Chooses the variant of an inference, reading its parameters first only
/// when a rule of its model needs them (`Exchange::read_parameters`).
async fn route<'t, X: Exchange>(table: &'t RoutingTable, x: &mut X, call: &Call<'_>) -> Result<Choice<'t>, Error> {
    if let Some(c) = choose(table, call, x.metadata(), None)? {
        return Ok(c);
    }
    x.read_parameters().await?;
    let x = &*x;
    let params = |name: &str| x.parameter(name);
    choose(table, call, x.metadata(), Some(&params))?
        .ok_or_else(|| Error::internal("content routing asked for the request's parameters twice"))
}

/// Chooses the variant of an inference: a variant the protocol names (a TF
/// Serving label) or the override header (when allowed) first, then the
/// model's content-routing rules (first match; docs/routing.md), then the
/// weighted split. `params`: the request's parameters, `None` when not read
/// yet; `Ok(None)` asks for them (a rule that could match needs them).
/// A rule naming another model goes one hop: that model's own rules may
/// pick its variant, then its split. Counts nothing: the caller that acts on
/// the choice counts its rules (`Choice::count`), so a request is counted once.
pub fn choose<'t>(
    table: &'t RoutingTable,
    call: &Call<'_>,
    metadata: &HeaderMap,
    params: Option<Parameters<'_>>,
) -> Result<Option<Choice<'t>>, Error> {
    if let Some(v) = call.variant {
        return Ok(Some(Choice::plain(select_named(table, call.model, call.version, v)?)));
    }
    let route = table.route(call.model)?;
    let overridden = table.allow_override && metadata.contains_key(&table.override_header);
    if route.rules.is_empty() || overridden {
        return Ok(Some(Choice::plain(select(table, call.model, call.version, metadata, call.principal)?)));
    }
    let facts = Facts { protocol: call.protocol, path: call.path, headers: metadata };
    let first = match route.rules.evaluate(&facts, params) {
        Verdict::NeedsParameters => return Ok(None),
        Verdict::NoMatch => {
            return Ok(Some(Choice::plain(select(table, call.model, call.version, metadata, call.principal)?)))
        }
        Verdict::Matched(r) => r,
    };
    let (model, variant) = match &first.target {
        Target::Variant(i) => {
            let selection = route.selection_of(*i, call.model, call.version);
            return Ok(Some(Choice { selection, redirect: None, rules: [Some(first), None] }));
        }
        Target::Route { model, variant } => (model, variant),
    };
    let target = table.routes.get(model.as_ref()).ok_or_else(|| {
        Error::unavailable(format!(
            "rule `{}` of model '{}' sends requests to model '{model}', which has no route",
            first.name, route.name
        ))
    })?;
    let (index, second) = match variant {
        Some(v) => {
            let i = target.variants.iter().position(|x| x.name == *v).ok_or_else(|| {
                Error::unavailable(format!(
                    "rule `{}` of model '{}' names variant '{v}', which model '{model}' does not have",
                    first.name, route.name
                ))
            })?;
            (Some(i), None)
        }
        None => match target.rules.evaluate(&facts, params) {
            Verdict::NeedsParameters => return Ok(None),
            // One hop: validation refuses a redirect to a model that redirects again.
            Verdict::Matched(r) => match r.target {
                Target::Variant(i) => (Some(i), Some(r)),
                Target::Route { .. } => (None, None),
            },
            Verdict::NoMatch => (None, None),
        },
    };
    let selection = match index {
        Some(i) => target.selection_of(i, model, call.version),
        None => {
            let sticky = target.sticky_header.as_ref().and_then(|h| metadata.get(h)).map(|v| v.as_bytes());
            target.select(model, call.version, None, sticky)?
        }
    };
    Ok(Some(Choice { selection, redirect: Some(target.name.as_ref()), rules: [Some(first), second] }))
}

/// When a traced request reached each phase.
#[derive(Default)]
struct Marks {
    routed: Option<Instant>,
    decoded: Option<Instant>,
    executing: Option<Instant>,
    executed: Option<Instant>,
}

/// A traced request's spans, children of its own: route, receive (read and
/// decode), cache (a cached variant's lookup and fill), queue (the batch
/// wait), backend (the call itself; its id is the parent backends were
/// sent), encode. A phase the request never reached has no span.
#[allow(clippy::too_many_arguments)]
fn spans(
    mut t: trace::ActiveTrace,
    m: &Marks,
    sel: &Selection<'_>,
    call: Call<'_>,
    status: u16,
    batch_rows: Option<usize>,
    cache: Option<CacheStatus>,
    backend_time: Duration,
) -> trace::ActiveTrace {
    use trace::otlp::{KeyValue, KIND_CLIENT, KIND_INTERNAL};
    let v = sel.variant;
    let version = sel.target.version.as_deref().unwrap_or("");
    let base = || {
        vec![
            KeyValue::string("switchyard.model", call.model),
            KeyValue::string("switchyard.variant", v.name.as_ref()),
            KeyValue::string("switchyard.version", version),
        ]
    };
    let end = Instant::now();
    if let Some(routed) = m.routed {
        t.child("route", KIND_INTERNAL, call.start, routed, None, base());
        if let Some(decoded) = m.decoded {
            t.child("receive", KIND_INTERNAL, routed, decoded, None, base());
        }
    }
    if let (Some(from), Some(to)) = (m.executing, m.executed) {
        if v.cache.is_some() {
            let mut a = base();
            a.push(KeyValue::string("switchyard.cache", cache.map_or("none", |c| c.as_str())));
            t.child("cache", KIND_INTERNAL, from, to, None, a);
        }
        let backend_start = to.checked_sub(backend_time).unwrap_or(from).max(from);
        if let Some(rows) = batch_rows {
            let mut a = base();
            a.push(KeyValue::int("switchyard.batch_size", rows as i64));
            t.child("queue", KIND_INTERNAL, from, backend_start, None, a);
        }
        if !backend_time.is_zero() {
            let mut a = base();
            a.push(KeyValue::string("switchyard.backend", v.backend_name.as_ref()));
            if let Some(rows) = batch_rows {
                a.push(KeyValue::int("switchyard.batch_size", rows as i64));
            }
            t.child("backend", KIND_CLIENT, backend_start, to, Some(t.backend_span), a);
        }
        t.child("encode", KIND_INTERNAL, to, end, None, base());
    }
    let mut a = base();
    a.push(KeyValue::int("http.response.status_code", i64::from(status)));
    t.root("infer", status, a);
    t
}

/// 403 unless `principal` (when auth is on) may do `action` on the model:
/// checked before routing, so a refused client learns nothing of the routes.
pub fn authorize(
    principal: Option<&Principal>,
    model: &str,
    version: Option<&str>,
    action: Action,
) -> Result<(), Error> {
    principal.map_or(Ok(()), |p| p.authorize(model, version, action))
}

/// Picks the variant for a request from its model, version and metadata
/// (sticky key and variant override are read from it). The override header
/// is ignored when `routing.allow_override` is off, and refused (403) to a
/// principal without the override permission.
pub fn select<'t>(
    table: &'t RoutingTable,
    model: &str,
    version: Option<&str>,
    metadata: &HeaderMap,
    principal: Option<&Principal>,
) -> Result<Selection<'t>, Error> {
    let header = |h: &HeaderName| metadata.get(h).map(|v| v.as_bytes());
    let override_variant = header(&table.override_header).filter(|_| table.allow_override);
    if let (Some(_), Some(p)) = (override_variant, principal) {
        if !p.may_override {
            return Err(Error::new(
                crate::error::ErrorKind::PermissionDenied,
                format!(
                    "principal '{}' may not force a variant with {} (needs the override permission)",
                    p.name, table.override_header
                ),
            ));
        }
    }
    let route = table.route(model)?;
    let sticky = route.sticky_header.as_ref().and_then(header);
    Ok(route.select(model, version, override_variant, sticky)?)
}

/// The variant a protocol names itself (a TF Serving label resolved to a
/// variant name): no weights, no stickiness, no override header.
pub fn select_named<'t>(
    table: &'t RoutingTable,
    model: &str,
    version: Option<&str>,
    variant: &str,
) -> Result<Selection<'t>, Error> {
    Ok(table.route(model)?.select(model, version, Some(variant.as_bytes()), None)?)
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

/// A request of a Triton sequence: straight to its backend, on the
/// sequence's endpoint. No cache (the answer depends on the sequence's
/// state, not only the request), no batch queue (a merged request would
/// carry one sequence's id for rows of several), no shadow mirrors (a
/// sampled mirror would see a sequence with holes in it).
async fn in_sequence(sel: &Selection<'_>, req: InferRequest, p: &sequence::Placement) -> Outcome {
    let t0 = Instant::now();
    let affinity = Affinity { pin: &p.pin, start: p.start };
    let response = sel.variant.backend.infer_pinned(&sel.target, req, affinity).await?;
    Ok(Executed::from_backend(response, t0.elapsed()))
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

/// Decrements the in-flight gauge however the request ends (here and in `tfrelay`).
pub(crate) struct InFlight<'a>(&'a prometheus::IntGauge);

impl<'a> InFlight<'a> {
    pub(crate) fn new(g: &'a prometheus::IntGauge) -> Self {
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
/// tasks that died (a panicked batch scheduler or reload task), and a JWKS
/// URL not fetched yet.
pub fn dead_tasks() -> Vec<String> {
    // A JWKS URL never fetched yet: every JWT would be refused.
    let jwks = crate::auth::remote::not_ready();
    if !switchyard_stats::tasks::any_panicked() {
        return jwks.into_iter().collect();
    }
    let dead = switchyard_stats::tasks::panicked().into_iter().map(|p| format!("{} ({})", p.task, p.message));
    jwks.into_iter().chain(dead).collect()
}
