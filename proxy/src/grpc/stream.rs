//! `ModelStreamInfer`: many requests in flight per stream, answered in
//! request order. A reader task starts each request as it arrives (at most
//! `STREAM_WINDOW` at once); a writer task sends each request's answers in
//! order. A request routed to a Triton behind a `v2-grpc` backend (a variant
//! that neither batches nor caches) is relayed on Triton's own stream, so a
//! decoupled model's zero, one or many responses per request (with
//! `triton_final_response`) all reach the client, in order; others run
//! through the shared lifecycle and answer once. A relayed request passes
//! the lifecycle's guards too — authorization, rate limits, then admission
//! (the model's and backend's concurrency limits, at the request's
//! priority), holding its slots until the backend's last response. A failed
//! request answers with `error_message` and the stream goes on; a client
//! that goes away aborts what still runs. The requests of one Triton
//! sequence run one after another, in order, and through the lifecycle
//! (never relayed), so they stay on the sequence's pinned endpoint.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use http::HeaderMap;
use switchyard_runtime::codec::grpc::pb;
use switchyard_runtime::BackendError;
use tokio::sync::{mpsc, oneshot};
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::exchange::{over_limit, parameter, version_opt, Shared, MODEL_STREAM_INFER_PATH};
use crate::admission;
use crate::auth::Principal;
use crate::error::Error;
use crate::pipeline::{Call, Choice};
use crate::protocol::Protocol;
use crate::sequence::{self, SequenceId};
use crate::{pipeline, respond};

/// Requests of one stream in flight at once; more wait for the oldest to answer.
const STREAM_WINDOW: usize = 128;

/// Responses of one request buffered while an earlier request still answers.
const RESPONSES_PER_REQUEST: usize = 16;

pub type Responses = ReceiverStream<Result<pb::ModelStreamInferResponse, Status>>;

/// Serves one stream. Sticky key and override come from the stream's
/// metadata: every request on it is routed alike.
pub fn serve(
    shared: Arc<Shared>,
    headers: HeaderMap,
    principal: Option<Arc<Principal>>,
    client: Option<std::net::IpAddr>,
    mut inbound: Streaming<pb::ModelInferRequest>,
) -> Responses {
    let headers = Arc::new(headers);
    let (out_tx, out_rx) = mpsc::channel(STREAM_WINDOW);
    let (pending_tx, mut pending_rx) = mpsc::channel::<Pending>(STREAM_WINDOW);
    // Reader: starts every request as it arrives, so many run at once.
    tokio::spawn(async move {
        let mut sequences = SequenceOrder::default();
        loop {
            let next = match inbound.message().await {
                Ok(Some(msg)) => {
                    let (shared, headers, principal) = (shared.clone(), headers.clone(), principal.clone());
                    let (tx, rx) = mpsc::channel(RESPONSES_PER_REQUEST);
                    // A request of a Triton sequence waits for the sequence's previous one.
                    let (after, done) = sequences.next(&msg);
                    let task = tokio::spawn(async move {
                        if let Some(previous) = after {
                            let _ = previous.await;
                        }
                        one(&shared, &headers, principal.as_deref(), client, msg, tx).await;
                        drop(done);
                    });
                    Pending::Running(AbortOnDrop(task), rx)
                }
                Ok(None) => break,
                Err(s) => Pending::Failed(over_limit(&s)),
            };
            let failed = matches!(next, Pending::Failed(_));
            if pending_tx.send(next).await.is_err() || failed {
                break;
            }
        }
    });
    // Writer: every answer of a request, requests in order.
    tokio::spawn(async move {
        while let Some(p) = pending_rx.recv().await {
            match p {
                Pending::Running(mut task, mut rx) => {
                    while let Some(r) = rx.recv().await {
                        // A client that went away drops the rest (and aborts what still runs).
                        if out_tx.send(Ok(r)).await.is_err() {
                            return;
                        }
                    }
                    if let Err(e) = (&mut task.0).await {
                        let r = pb::ModelStreamInferResponse {
                            error_message: format!("internal error: the request's task failed: {e}"),
                            infer_response: None,
                        };
                        if out_tx.send(Ok(r)).await.is_err() {
                            return;
                        }
                    }
                }
                Pending::Failed(s) => {
                    let _ = out_tx.send(Err(s)).await;
                    return;
                }
            }
        }
    });
    ReceiverStream::new(out_rx)
}

type Answers = mpsc::Sender<pb::ModelStreamInferResponse>;

/// One request of a stream; an error goes in `error_message` (the stream goes on).
async fn one(
    shared: &Shared,
    headers: &HeaderMap,
    principal: Option<&Principal>,
    client: Option<std::net::IpAddr>,
    msg: pb::ModelInferRequest,
    out: Answers,
) {
    let (model_name, model_version, id) = (msg.model_name.clone(), msg.model_version.clone(), msg.id.clone());
    let failed = |message: String| pb::ModelStreamInferResponse {
        error_message: message,
        // Lets the client tell which request failed.
        infer_response: Some(pb::ModelInferResponse {
            model_name: model_name.clone(),
            model_version: model_version.clone(),
            id: id.clone(),
            ..Default::default()
        }),
    };
    let answer = match relay(shared, headers, principal, client, msg, &out).await {
        Relay::Done => return,
        Relay::Failed(message) => failed(message),
        Relay::Pipeline(msg) => {
            match shared.infer(MODEL_STREAM_INFER_PATH, headers, msg, None, principal, client).await.result {
                Ok(r) => pb::ModelStreamInferResponse { error_message: String::new(), infer_response: Some(r) },
                Err(e) => failed(e.message),
            }
        }
    };
    let _ = out.send(answer).await;
}

/// What became of a request offered to the backend's own stream.
enum Relay {
    /// Relayed: every response was sent.
    Done,
    /// Relayed, and the backend failed it.
    Failed(String),
    /// Not a relayed model: it goes through the shared lifecycle.
    Pipeline(pb::ModelInferRequest),
}

/// Relays `msg` on the backend's `ModelStreamInfer` when its variant's backend
/// is a Triton behind `v2-grpc` and nothing of Switchyard's needs one answer
/// per request (batching, caching), passing every response on in order under
/// the client's model name.
async fn relay(
    shared: &Shared,
    headers: &HeaderMap,
    principal: Option<&Principal>,
    client: Option<std::net::IpAddr>,
    mut msg: pb::ModelInferRequest,
    out: &Answers,
) -> Relay {
    // A sequence's requests stay on their pinned endpoint: through the
    // lifecycle, one answer each (decoupled sequence models are not relayed).
    if sequence::grpc_sequence_key(&msg.parameters).is_some() {
        return Relay::Pipeline(msg);
    }
    let start = Instant::now();
    let table = shared.table.load_full();
    let call = Call {
        protocol: Protocol::V2Grpc,
        path: Some(MODEL_STREAM_INFER_PATH),
        model: &msg.model_name,
        version: version_opt(&msg.model_version),
        variant: None,
        deadline: None,
        start,
        principal,
        limiter: shared.guards.limiter.as_deref(),
        client,
        input_bytes: Some(prost::Message::encoded_len(&msg) as u64),
        priority: None,
    };
    // The lifecycle's guards, in its order: a refused request is refused here, in its words.
    // Routing as the lifecycle routes (content-routing rules see the message's parameters).
    let params = |name: &str| parameter(&msg.parameters, name);
    let Ok(Some(choice)) = pipeline::choose(&table, &call, headers, Some(&params)) else {
        // An unknown model or variant answers from the lifecycle, in its words.
        return Relay::Pipeline(msg);
    };
    let Choice { selection: sel, .. } = &choice;
    let variant = sel.variant;
    let relayed = match variant.backend.grpc_passthrough() {
        Some(b) if variant.batcher.is_none() && variant.cache.is_none() => b.relays_streams().await.then_some(b),
        _ => None,
    };
    let Some(backend) = relayed else {
        return Relay::Pipeline(msg);
    };
    choice.count();
    if let Err(e) = call.guard().await {
        return Relay::Failed(e.message);
    }
    // Admission, as `pipeline::infer` does: refused at once when saturated, else a slot at its priority.
    let refused = |e: Error| {
        pipeline::record(variant, respond::http_status(&e), start.elapsed(), std::time::Duration::ZERO);
        Relay::Failed(e.message)
    };
    let ticket = match table.admission.enter(&sel.route.name, &variant.backend_name) {
        Ok(t) => t,
        Err(e) => return refused(e),
    };
    let priority = admission::effective_priority(parameter_priority(&msg), call.caller_priority());
    // Held until the backend's final response for the request (or its stream's end).
    let mut permits = match ticket.admit(priority).await {
        Ok(p) => Some(p),
        Err(e) => return refused(e),
    };
    let record = |permits: &mut Option<admission::Permits>, ok: bool| {
        if let Some(mut p) = permits.take() {
            p.record(ok);
        }
    };
    let public = std::mem::replace(&mut msg.model_name, sel.target.name.to_string());
    msg.model_version = sel.target.version.as_deref().unwrap_or_default().to_owned();
    let mut metadata = HeaderMap::new();
    if let Some(f) = variant.backend.forwarding() {
        f.apply(headers, &mut metadata);
    }
    let status = |s: Status| Error::from(BackendError::Grpc { code: s.code() as i32, message: s.message().to_owned() });
    let mut responses = match backend.model_stream_infer(msg, metadata).await {
        Ok(r) => r,
        Err(s) => {
            let e = status(s);
            if e.signals_overload() {
                record(&mut permits, false);
            }
            pipeline::record(variant, respond::http_status(&e), start.elapsed(), start.elapsed());
            return Relay::Failed(e.message);
        }
    };
    loop {
        match responses.message().await {
            Ok(Some(mut r)) => {
                if let Some(ir) = r.infer_response.as_mut() {
                    ir.model_name.clone_from(&public);
                    // The work is done at the final response: the slots are free before the client hears of it.
                    if final_response(ir) {
                        record(&mut permits, true);
                    }
                }
                if out.send(r).await.is_err() {
                    return Relay::Done;
                }
            }
            Ok(None) => {
                record(&mut permits, true);
                pipeline::record(variant, 200, start.elapsed(), start.elapsed());
                return Relay::Done;
            }
            Err(s) => {
                let e = status(s);
                if e.signals_overload() {
                    record(&mut permits, false);
                }
                pipeline::record(variant, respond::http_status(&e), start.elapsed(), start.elapsed());
                return Relay::Failed(e.message);
            }
        }
    }
}

/// Whether a relayed response is the request's last (Triton's `triton_final_response`).
fn final_response(r: &pb::ModelInferResponse) -> bool {
    use pb::infer_parameter::ParameterChoice;
    matches!(
        r.parameters.get("triton_final_response").and_then(|p| p.parameter_choice.as_ref()),
        Some(ParameterChoice::BoolParam(true))
    )
}

/// Triton's `priority` parameter of a gRPC request, when it is a non-negative integer.
fn parameter_priority(msg: &pb::ModelInferRequest) -> Option<u64> {
    use pb::infer_parameter::ParameterChoice;
    match msg.parameters.get("priority")?.parameter_choice {
        Some(ParameterChoice::Uint64Param(p)) => Some(p),
        Some(ParameterChoice::Int64Param(p)) => u64::try_from(p).ok(),
        _ => None,
    }
}

/// Runs the requests of each Triton sequence on a stream one after another,
/// in the order they came (Triton's streaming keeps a sequence in order;
/// started concurrently, a sequence's second request could overtake its
/// first): each waits for the previous request of its (model, sequence id).
#[derive(Default)]
struct SequenceOrder {
    last: HashMap<(String, SequenceId), oneshot::Receiver<()>>,
}

impl SequenceOrder {
    /// What `msg` waits for before it runs, and what it drops when done.
    fn next(&mut self, msg: &pb::ModelInferRequest) -> (Option<oneshot::Receiver<()>>, Option<oneshot::Sender<()>>) {
        let Some(id) = sequence::grpc_sequence_key(&msg.parameters) else { return (None, None) };
        let key = (msg.model_name.clone(), id);
        let previous = self.last.remove(&key);
        let (done, waiter) = oneshot::channel();
        self.last.insert(key, waiter);
        if self.last.len() > 4 * STREAM_WINDOW {
            // Sequences whose last request finished need no place in line.
            self.last.retain(|_, w| matches!(w.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
        }
        (previous, Some(done))
    }
}

/// A stream request in flight (its task and where its answers arrive), or the failure that ends the stream.
enum Pending {
    Running(AbortOnDrop, mpsc::Receiver<pb::ModelStreamInferResponse>),
    Failed(Status),
}

/// Aborts the request's task when its answers are no longer wanted.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
