//! `ModelStreamInfer`: many requests in flight per stream, answered in
//! request order. A reader task starts each request as it arrives (at most
//! `STREAM_WINDOW` at once); a writer task sends the answers in order. A
//! failed request answers with `error_message` and the stream goes on; a
//! client that goes away aborts what still runs.

use std::sync::Arc;

use http::HeaderMap;
use switchyard_runtime::codec::grpc::pb;
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::exchange::{over_limit, Shared};
use crate::auth::Principal;

/// Requests of one stream in flight at once; more wait for the oldest to answer.
const STREAM_WINDOW: usize = 128;

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
        loop {
            let next = match inbound.message().await {
                Ok(Some(msg)) => {
                    let (shared, headers, principal) = (shared.clone(), headers.clone(), principal.clone());
                    Pending::Running(AbortOnDrop(tokio::spawn(async move {
                        one(&shared, &headers, principal.as_deref(), client, msg).await
                    })))
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
    // Writer: answers in request order.
    tokio::spawn(async move {
        while let Some(p) = pending_rx.recv().await {
            let (item, last) = match p {
                Pending::Running(mut task) => match (&mut task.0).await {
                    Ok(r) => (Ok(r), false),
                    Err(e) => (
                        Ok(pb::ModelStreamInferResponse {
                            error_message: format!("internal error: the request's task failed: {e}"),
                            infer_response: None,
                        }),
                        false,
                    ),
                },
                Pending::Failed(s) => (Err(s), true),
            };
            // A client that went away drops the rest (and aborts what still runs).
            if out_tx.send(item).await.is_err() || last {
                break;
            }
        }
    });
    ReceiverStream::new(out_rx)
}

/// One request of a stream; an error goes in `error_message` (the stream goes on).
async fn one(
    shared: &Shared,
    headers: &HeaderMap,
    principal: Option<&Principal>,
    client: Option<std::net::IpAddr>,
    msg: pb::ModelInferRequest,
) -> pb::ModelStreamInferResponse {
    let (model_name, model_version, id) = (msg.model_name.clone(), msg.model_version.clone(), msg.id.clone());
    match shared.infer(headers, msg, None, principal, client).await.result {
        Ok(r) => pb::ModelStreamInferResponse { error_message: String::new(), infer_response: Some(r) },
        Err(e) => pb::ModelStreamInferResponse {
            error_message: e.message,
            // Lets the client tell which request failed.
            infer_response: Some(pb::ModelInferResponse { model_name, model_version, id, ..Default::default() }),
        },
    }
}

/// A stream request in flight, or the failure that ends the stream.
enum Pending {
    Running(AbortOnDrop),
    Failed(Status),
}

/// Aborts the request's task when its answer is no longer wanted.
struct AbortOnDrop(tokio::task::JoinHandle<pb::ModelStreamInferResponse>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
