//! KServe V2 / Open Inference Protocol REST bodies: JSON tensors and the
//! binary tensor extension, in both directions (client ↔ Switchyard ↔ backend).
//!
//! `decode` turns bodies into the tensor model and `encode` writes them; both
//! convert a tensor's JSON `data` through `elements`, which knows datatypes
//! and nothing of bodies. Neither of `decode` and `encode` uses the other.
//! `scan` checks a JSON body as `decode` would without building its tensors
//! (the fast path of a request whose body goes to its backend as it came).

mod decode;
mod elements;
mod encode;
mod scan;

pub use decode::{decode_request, decode_response};
pub use encode::{encode_request, encode_response, error_body, Encoded};
pub use scan::{build_request, check_request, check_response, relabel_response};

/// HTTP header that marks a binary-extension body and gives the JSON part's length.
pub const HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";

/// Helpers the codec's tests share.
#[cfg(test)]
pub(crate) mod test_support {
    use bytes::Bytes;

    use super::decode_request;
    use crate::error::CodecError;
    use crate::tensor::{InferRequest, Tensor};

    /// Decodes a V2 JSON request body.
    pub fn req(json: &str) -> Result<InferRequest, CodecError> {
        decode_request(&Bytes::copy_from_slice(json.as_bytes()), None)
    }

    /// The FP32 values of a tensor.
    pub fn f32s(t: &Tensor) -> Vec<f32> {
        t.data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::test_support::{f32s, req};
    use super::*;
    use crate::tensor::{InferRequest, InferResponse, Tensor};

    /// BYTES elements are any bytes, NUL included, on JSON, the binary extension and gRPC alike.
    #[test]
    fn bytes_with_nul_survive_every_wire_format() {
        let want: &[u8] = b"\x03\0\0\0a\0b\x01\0\0\0\0";
        let json =
            req(r#"{"inputs":[{"name":"s","shape":[2],"datatype":"BYTES","data":["a\u0000b","\u0000"]}]}"#).unwrap();
        assert_eq!(&json.inputs[0].data[..], want);
        let t = Tensor::new("s", crate::tensor::DataType::Bytes, vec![2], Bytes::from_static(want));
        let resp = InferResponse { model_name: "m".into(), outputs: vec![t.clone()], ..Default::default() };
        for binary in [false, true] {
            let enc = encode_response(&resp, |_| binary).unwrap();
            let back = decode_response(&enc.body, enc.header_len).unwrap();
            assert_eq!(&back.outputs[0].data[..], want, "binary: {binary}");
        }
        let grpc = crate::codec::grpc::encode_response(resp.clone(), false);
        let back = crate::codec::grpc::decode_response(grpc).unwrap();
        assert_eq!(&back.outputs[0].data[..], want);
        let typed = crate::codec::grpc::bytes_to_contents(&t).unwrap();
        assert_eq!(typed.bytes_contents, vec![Bytes::from_static(b"a\0b"), Bytes::from_static(b"\0")]);
    }

    #[test]
    fn json_flat_and_nested_give_the_same_bytes() {
        let a = req(r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2.5,3,4]}]}"#).unwrap();
        let b = req(r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2.5],[3,4]]}]}"#).unwrap();
        assert_eq!(a.inputs[0].data, b.inputs[0].data);
        assert_eq!(f32s(&a.inputs[0]), vec![1.0, 2.5, 3.0, 4.0]);
    }

    #[test]
    fn every_datatype_round_trips_through_json_and_binary() {
        let cases = [
            ("BOOL", "[true,false]"),
            ("UINT8", "[0,255]"),
            ("UINT16", "[0,65535]"),
            ("UINT32", "[0,4294967295]"),
            ("UINT64", "[0,18446744073709551615]"),
            ("INT8", "[-128,127]"),
            ("INT16", "[-32768,32767]"),
            ("INT32", "[-2147483648,2147483647]"),
            ("INT64", "[-9223372036854775808,9223372036854775807]"),
            ("FP16", "[1.5,-2.0]"),
            ("BF16", "[1.5,-2.0]"),
            ("FP32", "[1.5,-2.25]"),
            ("FP64", "[1.5,-2.125]"),
            ("BYTES", r#"["hello",""]"#),
        ];
        for (dt, data) in cases {
            let body = format!(r#"{{"inputs":[{{"name":"x","shape":[2],"datatype":"{dt}","data":{data}}}]}}"#);
            let r = req(&body).unwrap_or_else(|e| panic!("{dt}: {e}"));
            // JSON out and back.
            let resp = InferResponse { model_name: "m".into(), outputs: r.inputs.clone(), ..Default::default() };
            let enc = encode_response(&resp, |_| false).unwrap();
            let back = decode_response(&enc.body, enc.header_len).unwrap();
            assert_eq!(back.outputs[0].data, r.inputs[0].data, "{dt} json");
            // Binary out and back.
            let enc = encode_response(&resp, |_| true).unwrap();
            assert!(enc.header_len.is_some());
            let back = decode_response(&enc.body, enc.header_len).unwrap();
            assert_eq!(back.outputs[0], r.inputs[0], "{dt} binary");
        }
    }

    #[test]
    fn binary_request_is_split_by_binary_data_size() {
        let json = r#"{"inputs":[{"name":"a","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":8}},{"name":"b","shape":[1],"datatype":"FP32","data":[7]}],"outputs":[{"name":"y","parameters":{"binary_data":true}}]}"#;
        let mut body = json.as_bytes().to_vec();
        body.extend_from_slice(&1i32.to_le_bytes());
        body.extend_from_slice(&2i32.to_le_bytes());
        let r = decode_request(&Bytes::from(body), Some(json.len())).unwrap();
        assert_eq!(&r.inputs[0].data[..], &[1, 0, 0, 0, 2, 0, 0, 0]);
        assert!(r.inputs[0].parameters.is_empty());
        assert!(r.wants_binary("y"));
        assert!(!r.wants_binary("z"));
        // The request re-encoded for a backend round-trips both ways.
        for binary in [false, true] {
            let enc = encode_request(&r, binary).unwrap();
            let again = decode_request(&enc.body, enc.header_len).unwrap();
            assert_eq!(again.inputs, r.inputs);
            assert_eq!(again.outputs[0].binary, Some(binary));
        }
    }

    /// A backend's BYTES output with a broken length prefix is an error to
    /// answer, not a panic (nothing guarantees every backend validates).
    #[test]
    fn unencodable_tensors_are_errors() {
        let bad = Tensor::new("s", crate::tensor::DataType::Bytes, vec![1], Bytes::from_static(&[9, 0, 0, 0, b'x']));
        let resp = InferResponse { model_name: "m".into(), outputs: vec![bad.clone()], ..Default::default() };
        assert!(encode_response(&resp, |_| false).is_err());
        let request = InferRequest { inputs: vec![bad], ..Default::default() };
        assert!(encode_request(&request, false).is_err());
    }
}
