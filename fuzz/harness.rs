//! What each fuzz target does with its bytes, shared by the cargo-fuzz
//! targets (`fuzz/fuzz_targets/`) and the corpus replay that runs them as an
//! ordinary test (`tests/fuzz_corpus.rs`). Every decoder must refuse bad
//! bytes with an error, never panic; what it accepts must survive a
//! re-encoding unchanged.
#![allow(dead_code)]

#[path = "../proxy/src/auth/jwt.rs"]
mod jwt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use prost::Message;
use switchyard_runtime::codec::{grpc, v2};
use switchyard_runtime::InferRequest;

/// The first byte picks the body's form: even, JSON only; odd, JSON of the
/// length in the next two bytes (little-endian) then binary tensor data, as
/// `Inference-Header-Content-Length` says.
fn body(data: &[u8]) -> (Bytes, Option<usize>) {
    match data {
        [mode, a, b, rest @ ..] if mode % 2 == 1 => {
            (Bytes::copy_from_slice(rest), Some(u16::from_le_bytes([*a, *b]) as usize))
        }
        [_, rest @ ..] => (Bytes::copy_from_slice(rest), None),
        [] => (Bytes::new(), None),
    }
}

/// A request without how its outputs should come back: encoding a request
/// for a backend sets that itself (binary outputs with the extension, JSON without).
fn without_output_encoding(mut req: InferRequest) -> InferRequest {
    req.binary_output = false;
    req.outputs.iter_mut().for_each(|o| o.binary = None);
    req
}

/// The one-pass check of a JSON body (`v2::check_request`, the fast path
/// of a request forwarded as it came) judges it as the decode does: the same
/// error, or the same request once its inputs are built.
fn check_agrees_with_decode(body: &Bytes) {
    let decoded = v2::decode_request(body, None);
    let checked = v2::check_request(body);
    match (decoded, checked) {
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "the check and the decode refuse differently"),
        (Ok(want), Ok(got)) => {
            let mut built = v2::build_request(got).expect("a checked request builds");
            built.raw_json = None;
            assert_eq!(built, want, "the check and the decode accept differently");
        }
        (a, b) => panic!("the decode says {a:?}, the check {b:?}"),
    }
}

/// A V2 HTTP infer request body, as a client sends it.
pub fn v2_request(data: &[u8]) {
    let (body, header_len) = body(data);
    if header_len.is_none() {
        check_agrees_with_decode(&body);
    }
    let Ok(req) = v2::decode_request(&body, header_len) else { return };
    let want = without_output_encoding(req.clone());
    for binary in [false, true] {
        // JSON cannot carry NaN or infinity: such a request goes binary only.
        let enc = match v2::encode_request(&req, binary) {
            Ok(enc) => enc,
            Err(e) if !binary && e.to_string().contains("JSON cannot carry") => continue,
            Err(e) => panic!("a decoded request does not encode (binary: {binary}): {e}"),
        };
        let again = v2::decode_request(&enc.body, enc.header_len).expect("a re-encoded request decodes");
        assert_eq!(without_output_encoding(again), want, "request changed by a round trip (binary: {binary})");
    }
}

/// A V2 HTTP infer response body, as a remote backend sends it.
pub fn v2_response(data: &[u8]) {
    let (body, header_len) = body(data);
    if header_len.is_none() {
        // The one-pass check refuses what the decode refuses, in its words.
        match (v2::decode_response(&body, None), v2::check_response(&body)) {
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "the check and the decode refuse differently"),
            (Ok(want), Ok(got)) => assert_eq!(
                (got.model_name, got.model_version, got.id, got.parameters),
                (want.model_name, want.model_version, want.id, want.parameters),
                "the check and the decode read the answer differently"
            ),
            (a, b) => panic!("the decode says {a:?}, the check {b:?}"),
        }
    }
    let Ok(resp) = v2::decode_response(&body, header_len) else { return };
    for binary in [false, true] {
        let enc = match v2::encode_response(&resp, |_| binary) {
            Ok(enc) => enc,
            Err(e) if !binary && e.to_string().contains("JSON cannot carry") => continue,
            Err(e) => panic!("a decoded response does not encode (binary: {binary}): {e}"),
        };
        let again = v2::decode_response(&enc.body, enc.header_len).expect("a re-encoded response decodes");
        assert_eq!(again, resp, "response changed by a round trip (binary: {binary})");
    }
}

/// A gRPC ModelInferRequest message, as a client sends it.
pub fn grpc_request(data: &[u8]) {
    let Ok(msg) = grpc::pb::ModelInferRequest::decode(data) else { return };
    let Ok(decoded) = grpc::decode_request(msg) else { return };
    let name = decoded.model_name.clone();
    let pb = grpc::encode_request(decoded.request.clone(), &name, decoded.model_version.as_deref());
    let again = grpc::decode_request(pb).expect("a re-encoded request decodes");
    assert_eq!(again.request, decoded.request, "request changed by a round trip");
}

/// A gRPC ModelInferResponse message, as a remote backend sends it.
pub fn grpc_response(data: &[u8]) {
    let Ok(msg) = grpc::pb::ModelInferResponse::decode(data) else { return };
    let Ok(resp) = grpc::decode_response(msg) else { return };
    for raw in [false, true] {
        let again =
            grpc::decode_response(grpc::encode_response(resp.clone(), raw)).expect("a re-encoded response decodes");
        assert_eq!(again, resp, "response changed by a round trip (raw: {raw})");
    }
}

/// A config file.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = switchyard_config::ValidatedConfig::parse(text, std::path::Path::new("/nonexistent/switchyard-fuzz"));
}

/// A model server's Prometheus metrics page (load-aware picking reads it).
pub fn load_metrics(data: &[u8]) {
    let q = switchyard_runtime::backend::health::parse_queue_metrics(&String::from_utf8_lossy(data));
    assert!(q.pending.is_finite());
}

/// The keys the `jwt` target verifies against: an Ed25519 key from a fixed
/// seed (so the fuzzer can reach the claim checks with tokens it signs) in a
/// JWKS beside a P-256 key, both with kids.
fn jwt_keys() -> &'static (ring::signature::Ed25519KeyPair, jwt::Jwks) {
    static KEYS: std::sync::OnceLock<(ring::signature::Ed25519KeyPair, jwt::Jwks)> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        use ring::signature::KeyPair;
        let ed = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[7; 32]).expect("a 32-byte seed");
        let x = URL_SAFE_NO_PAD.encode(ed.public_key().as_ref());
        let jwks = format!(
            r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","alg":"EdDSA","use":"sig","kid":"ed","x":"{x}"}},
            {{"kty":"EC","crv":"P-256","kid":"ec","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}}]}}"#
        );
        (ed, jwt::Jwks::parse(jwks.as_bytes()).expect("the harness's JWKS parses"))
    })
}

/// JWTs and JWKS documents, as a client and a key file send them. The first
/// byte picks what the rest is: 0, a JWKS to parse; 1, a token to verify as
/// it stands; anything else, a token header and claims (split at the first
/// NUL) signed with the harness's Ed25519 key, so the fuzzer gets past the
/// signature to the header, claim and time checks. Whatever verifies must be
/// exactly the signed claims, and (expiry aside) satisfy the rules.
pub fn jwt(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let (key, jwks) = jwt_keys();
    let rules = jwt::Rules {
        issuer: Some("https://issuer.example".into()),
        audience: Some("switchyard".into()),
        leeway: std::time::Duration::from_secs(60),
    };
    match mode {
        0 => {
            if let Ok(parsed) = jwt::Jwks::parse(rest) {
                assert!(!parsed.is_empty(), "a JWKS that parses holds a key");
            }
        }
        1 => {
            if let Ok(token) = std::str::from_utf8(rest) {
                let _ = jwt::verify(token, jwks, &rules);
            }
        }
        _ => {
            let (header, claims) = match rest.iter().position(|&b| b == 0) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &b"{}"[..]),
            };
            let signed = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
            let sig = key.sign(signed.as_bytes());
            let token = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()));
            if let Ok(verified) = jwt::verify(&token, jwks, &rules) {
                let sent: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_slice(claims).expect("verified claims are a JSON object");
                assert_eq!(verified, sent, "verify returned other claims than were signed");
                assert!(verified.get("exp").and_then(serde_json::Value::as_u64).is_some(), "accepted without exp");
                assert_eq!(verified.get("iss").and_then(serde_json::Value::as_str), Some("https://issuer.example"));
            }
        }
    }
}

/// The signatures a TF Serving body is decoded against; the first byte picks one.
fn tf_signature(pick: u8) -> Vec<switchyard_runtime::codec::tfserving::InputSpec> {
    use switchyard_runtime::codec::tfserving::InputSpec;
    use switchyard_runtime::DataType;
    let one = |name: &str, datatype| InputSpec { name: name.into(), datatype };
    match pick % 5 {
        0 => vec![one("x", DataType::Fp32)],
        1 => vec![one("a", DataType::Fp64), one("s", DataType::Bytes)],
        2 => vec![one("i", DataType::Int8), one("u", DataType::Uint64), one("b", DataType::Bool)],
        3 => vec![one("h", DataType::Fp16), one("bf", DataType::Bf16)],
        _ => vec![one("s_bytes", DataType::Bytes)],
    }
}

/// A TF Serving REST predict body, as a client sends it: decoded against a
/// signature, what is accepted must come back unchanged from its own answer
/// form (the inputs encoded as `outputs`, then decoded again).
pub fn tfserving_request(data: &[u8]) {
    use switchyard_runtime::codec::tfserving::{decode_predict, encode_predict, Format};
    use switchyard_runtime::InferResponse;
    let Some((pick, body)) = data.split_first() else { return };
    let inputs = tf_signature(*pick);
    let Ok(p) = decode_predict(body, &inputs) else { return };
    p.request.validate().expect("a decoded request is valid");
    let resp = InferResponse { outputs: p.request.inputs.clone(), ..InferResponse::default() };
    let enc = encode_predict(&resp, Format::Columnar).expect("decoded tensors encode");
    // The answer's `outputs` is the request's `inputs`.
    let mut again = b"{\"inputs\"".to_vec();
    again.extend_from_slice(&enc[b"{\"outputs\"".len()..]);
    let back = decode_predict(&again, &inputs).expect("a re-encoded request decodes");
    assert_eq!(back.request.inputs, p.request.inputs, "tensors changed by a round trip");
    if p.format == Format::Row {
        encode_predict(&resp, Format::Row).expect("row tensors encode as rows");
    }
}

/// A TF Serving REST predict answer, as the `tfserving` backend receives it:
/// decoded against a signature's outputs, what is accepted must come back
/// unchanged from the backend's own writer (the outputs written as a request
/// body's `inputs`, then read again as an answer's `outputs`).
pub fn tfserving_response(data: &[u8]) {
    use switchyard_runtime::codec::tfserving::client::{
        decode_predict_response, encode_predict_request, TfSignature, TfTensorInfo, TfType,
    };
    let Some((pick, body)) = data.split_first() else { return };
    let outputs = tf_signature(*pick)
        .into_iter()
        .map(|s| TfTensorInfo { name: s.name, dtype: TfType::V2(s.datatype), shape: None })
        .collect();
    let sig = TfSignature { version: None, inputs: Vec::new(), outputs };
    let Ok(tensors) = decode_predict_response(body, &sig, &[]) else { return };
    for t in &tensors {
        t.validate().expect("a decoded output is valid");
    }
    let req = InferRequest { inputs: tensors.clone(), ..InferRequest::default() };
    let enc = match encode_predict_request(&req, "serving_default") {
        Ok(enc) => enc,
        // JSON has no shape for an empty list's inner dimensions: refused by name, never guessed.
        Err(e) if e.to_string().contains("cannot travel as TF Serving JSON") => return,
        Err(e) => panic!("decoded outputs do not encode: {e}"),
    };
    let prefix = b"{\"signature_name\":\"serving_default\",\"inputs\"";
    assert!(enc.starts_with(prefix), "request body starts with its signature and inputs");
    let mut again = b"{\"outputs\"".to_vec();
    again.extend_from_slice(&enc[prefix.len()..]);
    let back = decode_predict_response(&again, &sig, &[]).expect("re-encoded outputs decode");
    assert_eq!(back, tensors, "tensors changed by a round trip");
}
