//! One KServe V2 gRPC inference through the shared lifecycle: the
//! `ModelInferRequest` is decoded into the tensor model and the answer
//! encoded back (typed contents or raw, as the client sent), with the
//! client's `grpc-timeout` as the deadline. Also the wire details every RPC
//! shares: that deadline's syntax and the over-limit status.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderValue};
use prost::Message;
use switchyard_runtime::codec::grpc::{self as codec, pb};
use switchyard_runtime::{InferRequest, InferResponse};
use tonic::Status;

use crate::access_log::SharedNote;
use crate::auth::Principal;
use crate::error::Error;
use crate::headers::{BATCH_SIZE_HEADER, CACHE_HEADER, OVERHEAD_HEADER, VARIANT_HEADER};
use crate::metrics::Metrics;
use crate::pipeline::{self, Answer, Call, Exchange};
use crate::protocol::{Param, Protocol};
use crate::routing::RoutingTable;
use crate::shm;

/// What every RPC of the listener shares.
pub struct Shared {
    pub table: Arc<ArcSwap<RoutingTable>>,
    pub metrics: Metrics,
    pub max_message_bytes: usize,
    /// Authentication, rate limits, body hashing.
    pub guards: crate::guards::Guards,
}

struct GrpcExchange<'a> {
    headers: &'a HeaderMap,
    message: Option<pb::ModelInferRequest>,
    max_message_bytes: usize,
    /// Whether system shared memory is on, and the outputs that go to it.
    shm: bool,
    shm_out: Vec<shm::OutputTarget>,
}

impl Exchange for GrpcExchange<'_> {
    type Encoded = pb::ModelInferResponse;

    fn metadata(&self) -> &HeaderMap {
        self.headers
    }

    async fn decode(&mut self) -> Result<InferRequest, Error> {
        let msg = self.message.take().ok_or_else(|| Error::internal("the request was decoded twice"))?;
        let mut req = codec::decode_request(msg)?.request;
        self.shm_out = shm::resolve(&mut req, self.shm)?;
        Ok(req)
    }

    fn parameter(&self, name: &str) -> Option<Param<'_>> {
        parameter(&self.message.as_ref()?.parameters, name)
    }

    async fn closed(&mut self) {
        // tonic drops the handler's future when the client cancels.
        std::future::pending().await
    }

    fn encode(&mut self, mut resp: InferResponse) -> Result<pb::ModelInferResponse, Error> {
        shm::write_outputs(&mut resp, &self.shm_out)?;
        // Triton answers in raw_output_contents whatever the request used; clients expect it.
        let out = codec::encode_response(resp, true);
        let len = out.encoded_len();
        if len > self.max_message_bytes {
            return Err(Error::too_large(format!(
                "response of {len} bytes exceeds listeners.grpc.max_message_bytes ({})",
                self.max_message_bytes
            )));
        }
        Ok(out)
    }
}

/// Fills the access line's note of a unary inference RPC (the `edge` layer writes it).
pub fn note_inference<E>(
    note: Option<&SharedNote>,
    model: String,
    version: Option<String>,
    bytes_in: u64,
    body_sha256: Option<String>,
    a: &Answer<E>,
    bytes_out: impl FnOnce(&E) -> usize,
) {
    if let Some(n) = note.and_then(|n| n.lock().ok()).as_deref_mut() {
        n.model = Some(model);
        n.version = version.filter(|v| !v.is_empty());
        n.variant = a.variant.as_ref().and_then(|v| v.to_str().ok()).map(str::to_string);
        n.rule.clone_from(&a.rule);
        n.bytes_in = bytes_in;
        n.body_sha256 = body_sha256;
        match &a.result {
            Ok(r) => n.bytes_out = bytes_out(r) as u64,
            Err(e) => n.error = Some(e.kind.label()),
        }
    }
}

/// The answer's Switchyard metadata (variant, overhead, batch size, cache), as on HTTP.
pub fn answer_metadata(h: &mut HeaderMap, variant: Option<HeaderValue>, a: &AnswerInfo) {
    if let Some(v) = variant {
        h.insert(VARIANT_HEADER, v);
    }
    h.insert(OVERHEAD_HEADER, HeaderValue::from(a.overhead.as_micros() as u64));
    if let Some(rows) = a.batch_rows {
        h.insert(BATCH_SIZE_HEADER, HeaderValue::from(rows));
    }
    if let Some(status) = a.cache {
        h.insert(CACHE_HEADER, status.header_value());
    }
}

/// What an answer says besides its result (read before the result moves on).
pub struct AnswerInfo {
    pub overhead: Duration,
    pub batch_rows: Option<usize>,
    pub cache: Option<crate::cache::CacheStatus>,
}

impl AnswerInfo {
    pub fn of<E>(a: &Answer<E>) -> AnswerInfo {
        AnswerInfo { overhead: a.overhead, batch_rows: a.batch_rows, cache: a.cache }
    }
}

/// The gRPC method paths of the two inference RPCs (content-routing rules match on them).
pub const MODEL_INFER_PATH: &str = "/inference.GRPCInferenceService/ModelInfer";
pub const MODEL_STREAM_INFER_PATH: &str = "/inference.GRPCInferenceService/ModelStreamInfer";

/// A `ModelInferRequest` parameter as content-routing rules see it.
pub fn parameter<'a>(
    params: &'a std::collections::HashMap<String, pb::InferParameter>,
    name: &str,
) -> Option<Param<'a>> {
    use pb::infer_parameter::ParameterChoice;
    Some(match params.get(name)?.parameter_choice.as_ref()? {
        ParameterChoice::StringParam(s) => Param::Str(s),
        ParameterChoice::BoolParam(b) => Param::Bool(*b),
        ParameterChoice::Int64Param(i) => Param::Int(*i),
        ParameterChoice::Uint64Param(u) => Param::Uint(*u),
        ParameterChoice::DoubleParam(f) => Param::Float(*f),
    })
}

pub fn version_opt(v: &str) -> Option<&str> {
    Some(v).filter(|v| !v.is_empty())
}

impl Shared {
    /// One inference, start to end, through `pipeline::infer`; `path` is the RPC's.
    pub async fn infer(
        &self,
        path: &str,
        headers: &HeaderMap,
        mut msg: pb::ModelInferRequest,
        deadline: Option<Duration>,
        principal: Option<&Principal>,
        client: Option<std::net::IpAddr>,
    ) -> Answer<pb::ModelInferResponse> {
        let input_bytes = Some(prost::Message::encoded_len(&msg) as u64);
        let start = Instant::now();
        // One snapshot per request, kept to the end.
        let table = self.table.load_full();
        // Kept in the message too: decode errors name the model, as Triton's do.
        let model = msg.model_name.clone();
        let version = std::mem::take(&mut msg.model_version);
        let mut x = GrpcExchange {
            headers,
            message: Some(msg),
            max_message_bytes: self.max_message_bytes,
            shm: table.server.system_shared_memory,
            shm_out: Vec::new(),
        };
        let call = Call {
            protocol: Protocol::V2Grpc,
            path: Some(path),
            model: &model,
            version: version_opt(&version),
            variant: None,
            deadline,
            start,
            principal,
            limiter: self.guards.limiter.as_deref(),
            client,
            input_bytes,
            priority: None,
        };
        pipeline::infer(&table, &self.metrics, &mut x, call).await
    }
}

/// The client's deadline (`grpc-timeout`: digits and a unit H, M, S, m, u or n).
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// tonic's "message length too large" → RESOURCE_EXHAUSTED naming the setting.
pub fn over_limit(s: &Status) -> Status {
    if s.message().contains("message length too large") {
        Status::resource_exhausted(format!("{} (listeners.grpc.max_message_bytes)", s.message()))
    } else {
        s.clone()
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use tonic::Code;

    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        let mut h = HeaderMap::new();
        for (v, want) in [
            ("5S", Some(Duration::from_secs(5))),
            ("250m", Some(Duration::from_millis(250))),
            ("100u", Some(Duration::from_micros(100))),
            ("2M", Some(Duration::from_secs(120))),
            ("1H", Some(Duration::from_secs(3600))),
            ("7n", Some(Duration::from_nanos(7))),
            ("5x", None),
            ("S", None),
            ("", None),
        ] {
            h.insert("grpc-timeout", HeaderValue::from_static(v));
            assert_eq!(grpc_timeout(&h), want, "{v:?}");
        }
    }

    #[test]
    fn over_limit_becomes_resource_exhausted() {
        let s = over_limit(&Status::out_of_range(
            "Error, decoded message length too large: found 9 bytes, the limit is: 4 bytes",
        ));
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(s.message().contains("listeners.grpc.max_message_bytes"));
        assert_eq!(over_limit(&Status::out_of_range("other")).code(), Code::OutOfRange);
    }
}
