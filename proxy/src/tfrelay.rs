//! TF Serving's Classify and Regress, relayed to a `kind: tfserving`
//! backend: routed, guarded, admitted and recorded as a predict is (labels,
//! versions, content-routing rules, the A/B split and sticky key; `infer`
//! permission, rate limits, admission, metrics), then the call goes as it is
//! to the chosen variant's backend (`TfRelay`), the model renamed to the
//! variant's target. No cache, batch queue, shadow mirrors or features: the
//! inputs are tf.Examples Switchyard never reads. A variant whose backend
//! relays nothing (the embedded runtime, V2 servers) serves predict
//! signatures only and gets TF Serving's refusal (`tfserving::refuse_method`).

use std::future::Future;
use std::time::{Duration, Instant};

use http::HeaderMap;
use switchyard_runtime::{BackendError, ModelTarget, TfRelay, TfVerb};

use crate::admission;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::pipeline::{self, Answer, Call, InFlight};
use crate::protocol::Param;
use crate::respond;
use crate::routing::RoutingTable;
use crate::tfserving::{refuse_method, TfMethod};
use crate::trace;

/// The relay's verb of a front end's method; `None` for Predict.
pub fn verb(method: TfMethod) -> Option<TfVerb> {
    match method {
        TfMethod::Predict => None,
        TfMethod::Classify => Some(TfVerb::Classify),
        TfMethod::Regress => Some(TfVerb::Regress),
    }
}

/// One Classify or Regress from guards to record. `signature_name`: the
/// request's, for content-routing rules that match on it. `run` makes the
/// backend call on the selected variant's relay, with its target and the
/// client metadata its `forward_headers` let through. `predict_hint` names
/// the predict method in the refusal a predict-only variant answers with;
/// `status_of` is the HTTP status an answer is recorded as (a relayed TF 4xx).
#[allow(clippy::too_many_arguments)]
pub async fn relay<'t, T, F, Fut>(
    table: &'t RoutingTable,
    metrics: &Metrics,
    headers: &HeaderMap,
    call: Call<'_>,
    method: TfMethod,
    signature_name: Option<&str>,
    predict_hint: &str,
    status_of: fn(&T) -> u16,
    run: F,
) -> Answer<T>
where
    F: FnOnce(&'t dyn TfRelay, ModelTarget, HeaderMap) -> Fut,
    Fut: Future<Output = Result<T, BackendError>>,
{
    let _in_flight = InFlight::new(&metrics.in_flight);
    let params = |name: &str| match name {
        "signature_name" => signature_name.filter(|s| !s.is_empty()).map(Param::Str),
        _ => None,
    };
    let chosen = match call.guard().await {
        // The parameter is at hand: routing never asks for more.
        Ok(()) => pipeline::choose(table, &call, headers, Some(&params))
            .and_then(|c| c.ok_or_else(|| Error::internal("content routing asked for parameters it was given"))),
        Err(e) => Err(e),
    };
    let choice = match chosen {
        Ok(c) => {
            c.count();
            c
        }
        Err(e) => {
            let known_route = table.route(call.model).is_ok();
            metrics.count_unrouted(known_route.then_some(call.model), respond::http_status(&e));
            let overhead = call.start.elapsed();
            return Answer { result: Err(e), variant: None, batch_rows: None, cache: None, overhead, rule: None };
        }
    };
    let sel = choice.selection;
    let rule = choice.rules[0].map(|r| r.name.clone());
    let variant = sel.variant;
    let _variant_in_flight = InFlight::new(&variant.metrics.in_flight);
    let mut backend_time = Duration::ZERO;
    let result = async {
        let Some(relay) = variant.backend.tf_relay() else {
            return Err(refuse_method(method, call.model, predict_hint));
        };
        let ticket = table.admission.enter(&sel.route.name, &variant.backend_name)?;
        let mut metadata = HeaderMap::new();
        if let Some(forward) = variant.backend.forwarding() {
            forward.apply(headers, &mut metadata);
            // The client's trace context goes on whatever `forward_headers` says, as on predict.
            for h in [trace::TRACEPARENT, trace::TRACESTATE] {
                if let Some(v) = headers.get(&h) {
                    metadata.insert(h, v.clone());
                }
            }
            metadata.remove(&table.override_header);
        }
        let priority = admission::effective_priority(None, call.caller_priority());
        let work = async {
            let mut permits = ticket.admit(priority).await?;
            let t0 = Instant::now();
            let out = run(relay, sel.target.clone(), metadata).await.map_err(Error::from);
            backend_time = t0.elapsed();
            match &out {
                Ok(_) => permits.record(true),
                Err(e) if e.signals_overload() => permits.record(false),
                Err(_) => {}
            }
            out
        };
        match call.deadline {
            None => work.await,
            Some(d) => tokio::time::timeout(d, work).await.unwrap_or_else(|_| Err(Error::deadline(d))),
        }
    }
    .await;
    let total = call.start.elapsed();
    let status = result.as_ref().map_or_else(respond::http_status, status_of);
    pipeline::record(variant, status, total, backend_time);
    Answer {
        result,
        variant: Some(variant.header_value.clone()),
        batch_rows: None,
        cache: None,
        overhead: total.saturating_sub(backend_time),
        rule,
    }
}
