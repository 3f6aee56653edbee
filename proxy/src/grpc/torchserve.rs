//! TorchServe's gRPC inference API (`org.pytorch.serve.grpc.inference.InferenceAPIsService`)
//! beside KServe V2 on the data gRPC port: Ping from the routes' readiness;
//! Predictions, StreamPredictions and StreamPredictions2 through the shared
//! lifecycle, the `input` map carried as `crate::torchserve` does for REST
//! (unchanged for a `torchserve` backend, the `data` entry translated for a
//! tensor one). Refusals TorchServe itself makes before inference keep its
//! status and words (INTERNAL, "Model not found: m"); the rest are
//! `respond::grpc_status`'s codes, as for V2.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::Stream;
use http::{HeaderMap, HeaderValue};
use switchyard_runtime::codec::torchserve::pb::{self, google, inference as ipb};
use switchyard_runtime::{InferRequest, InferResponse};
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpConnectInfo;
use tonic::{Request, Response, Status, Streaming};

use super::exchange::{grpc_timeout, version_opt, Shared};
use crate::access_log::SharedNote;
use crate::auth::Principal;
use crate::error::Error;
use crate::headers::{BATCH_SIZE_HEADER, CACHE_HEADER, OVERHEAD_HEADER, VARIANT_HEADER};
use crate::pipeline::{self, Answer, Call, Exchange, Routed};
use crate::protocol::Protocol;
use crate::respond;
use crate::torchserve::{self, TsCall};

pub use pb::InferenceServer;

/// The path prefix of `InferenceAPIsService`'s methods.
pub const PREFIX: &str = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/";

#[derive(Clone)]
pub struct TorchServeFront {
    pub shared: Arc<Shared>,
}

struct TsGrpcExchange<'a> {
    headers: &'a HeaderMap,
    call: TsCall,
    max_message_bytes: usize,
}

impl Exchange for TsGrpcExchange<'_> {
    type Encoded = Bytes;

    fn metadata(&self) -> &HeaderMap {
        self.headers
    }

    fn routed(&mut self, routed: &Routed<'_>) {
        self.call.routed(routed);
    }

    async fn decode(&mut self) -> Result<InferRequest, Error> {
        self.call.decode().await
    }

    async fn closed(&mut self) {
        // tonic drops the handler's future when the client cancels.
        std::future::pending().await
    }

    fn encode(&mut self, resp: InferResponse) -> Result<Bytes, Error> {
        let (body, _) = self.call.encode(resp)?;
        if body.len() > self.max_message_bytes {
            return Err(Error::too_large(format!(
                "response of {} bytes exceeds listeners.grpc.max_message_bytes ({})",
                body.len(),
                self.max_message_bytes
            )));
        }
        Ok(body)
    }
}

/// TorchServe's refusal before inference: INTERNAL, its message, then the exception's name.
fn refused(message: String, exception: &str) -> Status {
    Status::internal(format!("{message}\n{exception}"))
}

impl TorchServeFront {
    /// One prediction through the lifecycle; `Err` is TorchServe's own refusal (no variant was chosen).
    async fn run(
        &self,
        headers: &HeaderMap,
        path: &str,
        msg: ipb::PredictionsRequest,
        principal: Option<&Principal>,
        client: Option<std::net::IpAddr>,
    ) -> Result<Answer<Bytes>, Status> {
        if msg.model_name.is_empty() {
            return Err(refused("Parameter model_name is required.".into(), "BadRequestException.()"));
        }
        let table = self.shared.table.load_full();
        if table.route(&msg.model_name).is_err() {
            return Err(refused(
                torchserve::model_not_found(&msg.model_name).message,
                "org.pytorch.serve.archive.model.ModelNotFoundException",
            ));
        }
        let input_bytes = Some(prost::Message::encoded_len(&msg) as u64);
        let mut call = TsCall::new(&msg.model_name, None, false);
        call.inputs = msg.input.into_iter().collect();
        let mut x = TsGrpcExchange { headers, call, max_message_bytes: self.shared.max_message_bytes };
        let c = Call {
            protocol: Protocol::TorchServeGrpc,
            path: Some(path),
            model: &msg.model_name,
            version: version_opt(&msg.model_version),
            variant: None,
            deadline: grpc_timeout(headers),
            start: Instant::now(),
            principal,
            limiter: self.shared.guards.limiter.as_deref(),
            client,
            input_bytes,
            priority: None,
        };
        Ok(pipeline::infer(&table, &self.shared.metrics, &mut x, c).await)
    }

    /// Predictions and StreamPredictions (`method`): one answer, with the `x-switchyard-*` metadata.
    async fn unary(
        &self,
        method: &str,
        request: Request<ipb::PredictionsRequest>,
    ) -> Result<Response<ipb::PredictionResponse>, Status> {
        let (md, ext, msg) = request.into_parts();
        let headers = md.into_headers();
        let principal = ext.get::<Arc<Principal>>().cloned();
        let client = ext.get::<TcpConnectInfo>().and_then(|c| c.remote_addr()).map(|a| a.ip());
        let note = ext.get::<SharedNote>().cloned();
        let (model, version, bytes_in) =
            (msg.model_name.clone(), msg.model_version.clone(), prost::Message::encoded_len(&msg));
        let path = format!("{PREFIX}{method}");
        let answer = self.run(&headers, &path, msg, principal.as_deref(), client).await;
        if let Some(n) = note.as_ref().and_then(|n| n.lock().ok()).as_deref_mut() {
            n.model = Some(model).filter(|m| !m.is_empty());
            n.version = Some(version).filter(|v| !v.is_empty());
            n.bytes_in = bytes_in as u64;
            match &answer {
                Ok(a) => {
                    n.variant = a.variant.as_ref().and_then(|v| v.to_str().ok()).map(str::to_string);
                    n.rule.clone_from(&a.rule);
                    match &a.result {
                        Ok(b) => n.bytes_out = b.len() as u64,
                        Err(e) => n.error = Some(e.kind.label()),
                    }
                }
                Err(_) => n.error = Some("not_found"),
            }
        }
        let a = answer?;
        let prediction = a.result.map_err(|e| respond::grpc_status(&e))?;
        let mut resp = Response::new(ipb::PredictionResponse { prediction, sequence_id: None, status: None });
        let h = resp.metadata_mut().as_mut();
        if let Some(v) = a.variant {
            h.insert(VARIANT_HEADER, v);
        }
        h.insert(OVERHEAD_HEADER, HeaderValue::from(a.overhead.as_micros() as u64));
        if let Some(rows) = a.batch_rows {
            h.insert(BATCH_SIZE_HEADER, HeaderValue::from(rows));
        }
        if let Some(status) = a.cache {
            h.insert(CACHE_HEADER, status.header_value());
        }
        Ok(resp)
    }
}

type Answers = Pin<Box<dyn Stream<Item = Result<ipb::PredictionResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::InferenceService for TorchServeFront {
    async fn ping(&self, _: Request<()>) -> Result<Response<ipb::TorchServeHealthResponse>, Status> {
        let table = self.shared.table.load_full();
        let health = torchserve::health_json(torchserve::healthy(&table).await);
        Ok(Response::new(ipb::TorchServeHealthResponse { health }))
    }

    async fn predictions(
        &self,
        request: Request<ipb::PredictionsRequest>,
    ) -> Result<Response<ipb::PredictionResponse>, Status> {
        self.unary("Predictions", request).await
    }

    type StreamPredictionsStream = Answers;

    /// A backend that answers once (every backend Switchyard runs): the stream is that one answer.
    async fn stream_predictions(&self, request: Request<ipb::PredictionsRequest>) -> Result<Response<Answers>, Status> {
        let (md, resp, _) = self.unary("StreamPredictions", request).await?.into_parts();
        let mut out: Response<Answers> = Response::new(Box::pin(futures_util::stream::iter([Ok(resp)])));
        *out.metadata_mut() = md;
        Ok(out)
    }

    type StreamPredictions2Stream = Answers;

    /// A sequence of requests answered in order; a failed one answers with its
    /// `status` (as TorchServe does) and the stream goes on.
    async fn stream_predictions2(
        &self,
        request: Request<Streaming<ipb::PredictionsRequest>>,
    ) -> Result<Response<Answers>, Status> {
        let (md, ext, mut inbound) = request.into_parts();
        let headers = md.into_headers();
        let principal = ext.get::<Arc<Principal>>().cloned();
        let client = ext.get::<TcpConnectInfo>().and_then(|c| c.remote_addr()).map(|a| a.ip());
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let front = self.clone();
        let path = format!("{PREFIX}StreamPredictions2");
        tokio::spawn(async move {
            loop {
                let msg = match inbound.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) => return,
                    Err(s) => {
                        let _ = tx.send(Err(s)).await;
                        return;
                    }
                };
                let sequence_id = msg.sequence_id.clone();
                let status = match front.run(&headers, &path, msg, principal.as_deref(), client).await {
                    Ok(a) => a.result.map_err(|e| respond::grpc_status(&e)),
                    Err(s) => Err(s),
                };
                let answer = match status {
                    Ok(prediction) => ipb::PredictionResponse { prediction, sequence_id, status: None },
                    Err(s) => ipb::PredictionResponse {
                        prediction: Bytes::new(),
                        sequence_id,
                        status: Some(google::rpc::Status {
                            code: s.code() as i32,
                            message: s.message().to_owned(),
                            details: Vec::new(),
                        }),
                    },
                };
                if tx.send(Ok(answer)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
