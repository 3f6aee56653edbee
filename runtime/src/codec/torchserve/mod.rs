//! TorchServe's protocol over the tensor model: how TorchServe's opaque,
//! handler-defined bodies ride the one request lifecycle, and TorchServe's
//! gRPC messages (`pb`).
//!
//! # The contract
//!
//! TorchServe bodies are whatever the model's handler reads, so Switchyard
//! carries them as bytes, never parsing them unless a variant declares a
//! translation (the proxy's business, not this module's):
//!
//! - **A request** is an [`InferRequest`] whose inputs are `BYTES` tensors of
//!   shape `[1]`, one per TorchServe input. A REST body is the input named
//!   [`BODY_INPUT`] (`data`); TorchServe's gRPC clients send their body under
//!   `data` too (handlers read `data` or `body`), and a gRPC
//!   `PredictionsRequest.input` map gives one input per key, in key order (so
//!   equal maps are equal requests, whatever order they were sent in).
//! - The client's `Content-Type` travels as the request parameter
//!   [`CONTENT_TYPE`]; a call to TorchServe's explanations API carries the
//!   request parameter [`EXPLAIN`] = `true` (so it never shares a cache entry
//!   or a batch with a prediction).
//! - **An answer** is one `BYTES` output named [`OUTPUT`] (`data`), shape
//!   `[1]` (`[n]` for a batch, one element per request body), plus an
//!   optional response parameter [`CONTENT_TYPE`].
//! - **Batching**: the dynamic batcher merges `n` such requests along the
//!   first dimension, so the batch's inputs are `BYTES [n]` tensors — a
//!   TorchServe batch, a list of bodies — and splits the `[n]` answer back,
//!   one body each. Requests with different content types, input names or
//!   explanation flags do not share a batch (their parameters differ).
//!
//! The `kind: torchserve` backend forwards these bodies unchanged (its
//! `Backend::kind()` is `"torchserve"`); a front end facing a tensor backend
//! translates instead.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::Value;

use crate::error::CodecError;
use crate::tensor::{bytes_elements, DataType, InferRequest, InferResponse, Parameters, Tensor};

/// TorchServe's published gRPC APIs, generated from wire-compatible rewrites
/// under `runtime/proto/torchserve/`: `inference` (`InferenceAPIsService`:
/// Ping, Predictions, StreamPredictions, StreamPredictions2) and `management`
/// (`ManagementAPIsService`), clients and servers. `google.protobuf.Empty` is `()`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    pub mod google {
        pub mod rpc {
            tonic::include_proto!("google.rpc");
        }
        pub mod protobuf {
            tonic::include_proto!("google.protobuf");
        }
    }
    pub mod org {
        pub mod pytorch {
            pub mod serve {
                pub mod grpc {
                    pub mod inference {
                        tonic::include_proto!("org.pytorch.serve.grpc.inference");
                    }
                    pub mod management {
                        tonic::include_proto!("org.pytorch.serve.grpc.management");
                    }
                }
            }
        }
    }
    /// `InferenceAPIsService`'s generated client.
    pub use inference::inference_ap_is_service_client::InferenceApIsServiceClient as InferenceClient;
    /// `InferenceAPIsService`'s generated server (wraps an [`InferenceService`] implementation).
    pub use inference::inference_ap_is_service_server::{
        InferenceApIsService as InferenceService, InferenceApIsServiceServer as InferenceServer,
    };
    /// `ManagementAPIsService`'s generated client.
    pub use management::management_ap_is_service_client::ManagementApIsServiceClient as ManagementClient;
    pub use org::pytorch::serve::grpc::{inference, management};
}

/// The input a REST body (and a gRPC client's `data` entry) travels under.
pub const BODY_INPUT: &str = "data";
/// The one output of an answer: the bodies the handler returned.
pub const OUTPUT: &str = "data";
/// Request and response parameter: the body's `Content-Type`.
pub const CONTENT_TYPE: &str = "content_type";
/// Request parameter (`true`): the call is TorchServe's explanations API, not predictions.
pub const EXPLAIN: &str = "torchserve_explain";

/// Length-prefixed BYTES elements, the tensor model's layout.
fn bytes_data<'a>(elements: impl IntoIterator<Item = &'a [u8]>) -> Result<Bytes, CodecError> {
    let mut out = BytesMut::new();
    for el in elements {
        let len = u32::try_from(el.len()).map_err(|_| CodecError::invalid("a TorchServe body over 4 GiB"))?;
        out.put_u32_le(len);
        out.extend_from_slice(el);
    }
    Ok(out.freeze())
}

fn body_tensor(name: &str, body: &[u8]) -> Result<Tensor, CodecError> {
    Ok(Tensor::new(name, DataType::Bytes, vec![1], bytes_data([body])?))
}

fn parameters(content_type: Option<&str>, explain: bool) -> Parameters {
    let mut p = Parameters::new();
    if let Some(ct) = content_type.filter(|c| !c.is_empty()) {
        p.insert(CONTENT_TYPE.into(), Value::from(ct));
    }
    if explain {
        p.insert(EXPLAIN.into(), Value::Bool(true));
    }
    p
}

/// A REST call: the body as the input [`BODY_INPUT`], its content type, and
/// whether it is an explanation.
pub fn request_from_body(body: &[u8], content_type: Option<&str>, explain: bool) -> Result<InferRequest, CodecError> {
    Ok(InferRequest {
        inputs: vec![body_tensor(BODY_INPUT, body)?],
        parameters: parameters(content_type, explain),
        ..Default::default()
    })
}

/// A gRPC call: one input per entry of `PredictionsRequest.input`, in key
/// order. An empty map is a client error (TorchServe's handlers would get no data).
pub fn request_from_inputs<'a>(
    inputs: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    content_type: Option<&str>,
    explain: bool,
) -> Result<InferRequest, CodecError> {
    let sorted: BTreeMap<&str, &[u8]> = inputs.into_iter().collect();
    if sorted.is_empty() {
        return Err(CodecError::invalid("the request has no input (TorchServe's clients send the body under 'data')"));
    }
    let inputs = sorted.into_iter().map(|(k, v)| body_tensor(k, v)).collect::<Result<Vec<_>, _>>()?;
    Ok(InferRequest { inputs, parameters: parameters(content_type, explain), ..Default::default() })
}

/// The request's `Content-Type`, when the client sent one.
pub fn content_type(params: &Parameters) -> Option<&str> {
    params.get(CONTENT_TYPE).and_then(Value::as_str)
}

/// Whether the request is a call to the explanations API.
pub fn is_explanation(req: &InferRequest) -> bool {
    req.parameters.get(EXPLAIN).and_then(Value::as_bool).unwrap_or(false)
}

/// Whether `req` follows the contract: only `BYTES` inputs of rank 1, all of
/// the same length (one element per body of the batch).
pub fn is_body_request(req: &InferRequest) -> bool {
    let Some(rows) = req.inputs.first().and_then(|t| t.shape.first()) else { return false };
    req.inputs.iter().all(|t| t.datatype == DataType::Bytes && t.shape.len() == 1 && t.shape[0] == *rows)
}

/// One request body of a (possibly batched) request: its inputs by name.
pub type Body = BTreeMap<String, Bytes>;

/// The bodies of a request, one per batch row (a TorchServe batch, in order),
/// each holding every input's element for that row. Refuses a request that
/// does not follow the contract, naming why.
pub fn request_bodies(req: &InferRequest) -> Result<Vec<Body>, CodecError> {
    let rows = req
        .inputs
        .first()
        .and_then(|t| t.shape.first())
        .ok_or_else(|| CodecError::invalid("a TorchServe request needs at least one BYTES input"))?;
    let rows = usize::try_from(*rows).map_err(|_| CodecError::invalid("a negative batch size"))?;
    let mut bodies = vec![Body::new(); rows];
    for t in &req.inputs {
        if t.datatype != DataType::Bytes || t.shape.len() != 1 || t.shape[0] as usize != rows {
            return Err(CodecError::invalid(format!(
                "input '{}' is {} {:?}; a TorchServe body is a BYTES element, one per request ([{rows}])",
                t.name, t.datatype, t.shape
            )));
        }
        let mut n = 0;
        for (el, body) in bytes_elements(&t.data).zip(bodies.iter_mut()) {
            let el = el.map_err(|e| CodecError::invalid(format!("input '{}': {e}", t.name)))?;
            body.insert(t.name.clone(), t.data.slice_ref(el));
            n += 1;
        }
        if n != rows {
            return Err(CodecError::invalid(format!("input '{}' holds {n} bodies, not {rows}", t.name)));
        }
    }
    Ok(bodies)
}

/// An answer: one body per request of the batch (in order) as the output
/// [`OUTPUT`], and the content type the handler declared, if any.
pub fn response_from_bodies<B: AsRef<[u8]>>(
    model_name: &str,
    model_version: Option<&str>,
    bodies: &[B],
    content_type: Option<&str>,
) -> Result<InferResponse, CodecError> {
    let data = bytes_data(bodies.iter().map(AsRef::as_ref))?;
    Ok(InferResponse {
        model_name: model_name.to_owned(),
        model_version: model_version.map(str::to_owned),
        id: None,
        parameters: parameters(content_type, false),
        outputs: vec![Tensor::new(OUTPUT, DataType::Bytes, vec![bodies.len() as i64], data)],
        raw_json: None,
    })
}

/// The bodies of an answer, one per request of the batch, and its content type.
pub fn response_bodies(resp: &InferResponse) -> Result<(Vec<Bytes>, Option<&str>), CodecError> {
    let t = resp.outputs.iter().find(|t| t.name == OUTPUT).ok_or_else(|| {
        CodecError::invalid(format!("a TorchServe answer has a BYTES output '{OUTPUT}'; this one has none"))
    })?;
    if t.datatype != DataType::Bytes || t.shape.len() != 1 {
        return Err(CodecError::invalid(format!(
            "output '{OUTPUT}' is {} {:?}, not BYTES [n] (one body per request)",
            t.datatype, t.shape
        )));
    }
    let bodies = bytes_elements(&t.data)
        .map(|el| el.map(|s| t.data.slice_ref(s)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CodecError::invalid(format!("output '{OUTPUT}': {e}")))?;
    if bodies.len() as i64 != t.shape[0] {
        return Err(CodecError::invalid(format!(
            "output '{OUTPUT}' holds {} bodies but its shape says {}",
            bodies.len(),
            t.shape[0]
        )));
    }
    Ok((bodies, content_type(&resp.parameters)))
}

/// The one body of an unbatched answer (what a front end sends its client).
pub fn response_body(resp: &InferResponse) -> Result<(Bytes, Option<&str>), CodecError> {
    let (mut bodies, ct) = response_bodies(resp)?;
    if bodies.len() != 1 {
        return Err(CodecError::invalid(format!("the answer holds {} bodies for one request", bodies.len())));
    }
    Ok((bodies.pop().expect("one body"), ct))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::batch::{merge, split};

    #[test]
    fn a_rest_body_is_one_bytes_element_under_data() {
        let req = request_from_body(b"{\"x\": 1}", Some("application/json"), false).unwrap();
        req.validate().unwrap();
        assert_eq!(req.inputs.len(), 1);
        assert_eq!(req.inputs[0].name, BODY_INPUT);
        assert_eq!(req.inputs[0].datatype, DataType::Bytes);
        assert_eq!(req.inputs[0].shape, vec![1]);
        assert_eq!(content_type(&req.parameters), Some("application/json"));
        assert!(!is_explanation(&req));
        assert!(is_body_request(&req));
        let bodies = request_bodies(&req).unwrap();
        assert_eq!(bodies.len(), 1);
        assert_eq!(&bodies[0][BODY_INPUT][..], b"{\"x\": 1}");
    }

    #[test]
    fn grpc_inputs_are_sorted_and_explanations_are_marked() {
        let a = request_from_inputs([("data", &b"1"[..]), ("aux", &b"2"[..])], None, true).unwrap();
        let b = request_from_inputs([("aux", &b"2"[..]), ("data", &b"1"[..])], None, true).unwrap();
        assert_eq!(a, b, "equal maps are equal requests");
        assert_eq!(a.inputs[0].name, "aux");
        assert!(is_explanation(&a));
        assert_eq!(content_type(&a.parameters), None);
        let e = request_from_inputs(std::iter::empty(), None, false).unwrap_err().to_string();
        assert!(e.contains("no input"), "{e}");
    }

    #[test]
    fn a_merged_batch_is_a_list_of_bodies_and_splits_back() {
        let reqs: Vec<InferRequest> = ["a", "bb", ""]
            .iter()
            .map(|b| request_from_body(b.as_bytes(), Some("text/plain"), false).unwrap())
            .collect();
        let batch = merge(reqs.iter()).unwrap();
        assert_eq!(batch.inputs[0].shape, vec![3]);
        let bodies: Vec<Bytes> = request_bodies(&batch).unwrap().into_iter().map(|b| b[BODY_INPUT].clone()).collect();
        assert_eq!(bodies, vec![Bytes::from("a"), Bytes::from("bb"), Bytes::new()]);

        let answer = response_from_bodies("m", Some("1"), &[&b"A"[..], b"BB", b""], Some("text/plain")).unwrap();
        let parts = split(answer, &[1, 1, 1]).unwrap();
        let got: Vec<(Bytes, Option<String>)> = parts
            .iter()
            .map(|p| {
                let (b, ct) = response_body(p).unwrap();
                (b, ct.map(str::to_owned))
            })
            .collect();
        assert_eq!(got[1], (Bytes::from("BB"), Some("text/plain".into())));
        assert_eq!(got[2].0, Bytes::new());
    }

    #[test]
    fn different_content_types_do_not_share_a_batch() {
        let a = request_from_body(b"1", Some("application/json"), false).unwrap();
        let b = request_from_body(b"1", Some("text/plain"), false).unwrap();
        assert!(merge([&a, &b]).is_err());
        let c = request_from_body(b"1", Some("application/json"), true).unwrap();
        assert!(merge([&a, &c]).is_err(), "an explanation never joins a predictions batch");
    }

    #[test]
    fn requests_and_answers_off_the_contract_are_refused_with_a_reason() {
        let t = Tensor::new("x", DataType::Fp32, vec![1], Bytes::from_static(&[0, 0, 0, 0]));
        let req = InferRequest { inputs: vec![t], ..Default::default() };
        assert!(!is_body_request(&req));
        let e = request_bodies(&req).unwrap_err().to_string();
        assert!(e.contains("input 'x' is FP32 [1]"), "{e}");

        let none = InferResponse::default();
        assert!(response_bodies(&none).unwrap_err().to_string().contains("has none"));
        let mut two = response_from_bodies("m", None, &[&b"a"[..], b"b"], None).unwrap();
        assert!(response_body(&two).unwrap_err().to_string().contains("2 bodies for one request"));
        two.outputs[0].shape = vec![3];
        assert!(response_bodies(&two).unwrap_err().to_string().contains("holds 2 bodies but its shape says 3"));
    }

    #[test]
    fn the_generated_messages_keep_torchserve_s_field_numbers() {
        use prost::Message;
        let msg = pb::inference::PredictionsRequest {
            model_name: "m".into(),
            model_version: "2".into(),
            input: [("data".to_owned(), Bytes::from_static(b"x"))].into_iter().collect(),
            sequence_id: Some("s".into()),
        };
        let wire = msg.encode_to_vec();
        // field 1 (len) "m", field 2 (len) "2", field 3 (map entry), field 4 (len) "s"
        assert_eq!(&wire[..6], &[0x0a, 1, b'm', 0x12, 1, b'2']);
        assert_eq!(wire[6], 0x1a);
        assert_eq!(&wire[wire.len() - 3..], &[0x22, 1, b's']);
        let back = pb::inference::PredictionsRequest::decode(&wire[..]).unwrap();
        assert_eq!(back, msg);
    }
}
