//! Checking a V2 JSON body without building its tensors: one streaming pass
//! (serde_json's deserializer, counting visitors) that refuses exactly what
//! `decode` refuses — names, datatypes, shapes (sign and overflow), element
//! counts, every value's range — and keeps only what the pipeline reads: id,
//! parameters, requested outputs, each tensor's name, datatype and shape, and
//! where a response's `model_name` and `id` lie (for `relabel_response`).
//!
//! The pass accepts a subset of what `decode` accepts, with the same result;
//! anything it does not take (a body it refuses, tensors whose data is in the
//! binary section or in shared memory, binary output preferences) goes to the
//! full decode, so a refused body is refused with the decode's own words and
//! the cost of the second parse falls on bad or unusual bodies only.

use std::fmt;
use std::ops::Range;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::decode::{decode_request, decode_response, RequestField, ResponseField, TensorField, BINARY_DATA_SIZE};
use super::elements::{Count, Flatten};
use crate::error::CodecError;
use crate::tensor::{
    element_count, DataType, InferRequest, InferResponse, Parameters, RawJson, RequestedOutput, TensorHeader, Unbuilt,
    SHM_REGION,
};

/// Checks a V2 JSON request body (no binary section). The request it returns
/// has its inputs unbuilt (`InferRequest::inputs_pending`) when the one pass
/// took the body; otherwise it is `decode_request`'s answer, error included.
pub fn check_request(body: &Bytes) -> Result<InferRequest, CodecError> {
    match scan_request(body) {
        Some(req) => Ok(req),
        None => decode_request(body, None),
    }
}

/// Checks a backend's V2 JSON answer (no binary section), like `check_request`:
/// outputs unbuilt (`InferResponse::outputs_pending`) when the one pass took
/// it, else `decode_response`'s answer.
pub fn check_response(body: &Bytes) -> Result<InferResponse, CodecError> {
    match scan_response(body) {
        Some(resp) => Ok(resp),
        None => decode_response(body, None),
    }
}

/// Builds the inputs of a request `check_request` left unbuilt (a route
/// that turned out to need them); any other request is returned as it is.
pub fn build_request(req: InferRequest) -> Result<InferRequest, CodecError> {
    let Some(raw) = req.raw_json.as_ref().filter(|r| r.unbuilt.is_some()) else { return Ok(req) };
    let body = raw.body.clone();
    let mut built = decode_request(&body, None)?;
    built.metadata = req.metadata;
    built.raw_json = Some(RawJson::decoded(body));
    Ok(built)
}

/// Makes a response whose outputs are unbuilt say `model_name` and `id`
/// (when given) in its body too: only those values change in the bytes. A
/// response without such a body is left alone.
pub fn relabel_response(resp: &mut InferResponse, model_name: &str, id: Option<&str>) {
    let Some(RawJson { body, unbuilt: Some(unbuilt) }) = &mut resp.raw_json else { return };
    // (range to replace, its new JSON text), at most two, patched back to front.
    let mut edits: Vec<(Range<usize>, String)> = Vec::new();
    if resp.model_name != model_name {
        if let Some(r) = unbuilt.model_name.clone() {
            edits.push((r, json_string(model_name)));
        }
    }
    if let Some(id) = id.filter(|id| resp.id.as_deref() != Some(*id)) {
        match unbuilt.id.clone() {
            Some(r) => edits.push((r, json_string(id))),
            // No `id` key: one goes first in the object.
            None => match body.iter().position(|&b| b == b'{') {
                Some(open) => edits.push((open + 1..open + 1, format!("\"id\":{},", json_string(id)))),
                None => return,
            },
        }
    }
    if edits.is_empty() {
        return;
    }
    edits.sort_by_key(|(r, _)| std::cmp::Reverse(r.start));
    let mut out = body.to_vec();
    for (r, text) in &edits {
        out.splice(r.clone(), text.bytes());
    }
    *body = Bytes::from(out);
    // The ranges no longer point where they did; nothing patches twice.
    unbuilt.model_name = None;
    unbuilt.id = None;
    model_name.clone_into(&mut resp.model_name);
    if let Some(id) = id {
        resp.id = Some(id.to_owned());
    }
}

fn json_string(s: &str) -> String {
    Value::from(s).to_string()
}

/// A tensor's `data` as the pass saw it.
enum Data<'a> {
    Absent,
    /// Counted while the body was read (`datatype` came first).
    Counted(usize),
    /// Before `datatype`: counted once the datatype is known.
    Raw(&'a RawValue),
}

struct ScannedTensor<'a> {
    name: String,
    shape: Vec<i64>,
    datatype: &'a str,
    parameters: Option<Parameters>,
    data: Data<'a>,
}

#[derive(Deserialize)]
struct RawRequestedOutput {
    name: String,
    #[serde(default)]
    parameters: Option<Parameters>,
}

/// Refuses a key's second appearance, like the derived impls `decode` uses.
fn once<T, E: de::Error>(slot: &mut Option<T>, v: T, field: &'static str) -> Result<(), E> {
    if slot.is_some() {
        return Err(E::duplicate_field(field));
    }
    *slot = Some(v);
    Ok(())
}

/// One tensor object.
struct TensorSeed;

impl<'de> DeserializeSeed<'de> for TensorSeed {
    type Value = ScannedTensor<'de>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<ScannedTensor<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TensorSeed {
    type Value = ScannedTensor<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a tensor object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ScannedTensor<'de>, A::Error> {
        let (mut name, mut shape, mut datatype, mut parameters, mut data) = (None, None, None, None, None);
        while let Some(field) = map.next_key::<TensorField>()? {
            match field {
                TensorField::Name => once(&mut name, map.next_value::<String>()?, "name")?,
                TensorField::Shape => once(&mut shape, map.next_value::<Vec<i64>>()?, "shape")?,
                TensorField::Datatype => once(&mut datatype, map.next_value::<&'de str>()?, "datatype")?,
                TensorField::Parameters => {
                    once(&mut parameters, map.next_value::<Option<Parameters>>()?, "parameters")?
                }
                TensorField::Data => {
                    let d = match datatype.and_then(DataType::parse) {
                        Some(dt) => {
                            let mut n = Count::default();
                            map.next_value_seed(Flatten::new(dt, &mut n))?;
                            Data::Counted(n.0)
                        }
                        None => match map.next_value::<Option<&'de RawValue>>()? {
                            Some(raw) => Data::Raw(raw),
                            None => Data::Absent,
                        },
                    };
                    once(&mut data, d, "data")?;
                }
                TensorField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(ScannedTensor {
            name: name.ok_or_else(|| de::Error::missing_field("name"))?,
            shape: shape.ok_or_else(|| de::Error::missing_field("shape"))?,
            datatype: datatype.ok_or_else(|| de::Error::missing_field("datatype"))?,
            parameters: parameters.flatten(),
            data: data.unwrap_or(Data::Absent),
        })
    }
}

/// A JSON array of tensor objects.
struct TensorsSeed;

impl<'de> DeserializeSeed<'de> for TensorsSeed {
    type Value = Vec<ScannedTensor<'de>>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for TensorsSeed {
    type Value = Vec<ScannedTensor<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of tensors")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(1).min(16));
        while let Some(t) = seq.next_element_seed(TensorSeed)? {
            out.push(t);
        }
        Ok(out)
    }
}

struct ScannedRequest<'a> {
    id: Option<String>,
    parameters: Option<Parameters>,
    inputs: Vec<ScannedTensor<'a>>,
    outputs: Option<Vec<RawRequestedOutput>>,
}

struct RequestSeed;

impl<'de> DeserializeSeed<'de> for RequestSeed {
    type Value = ScannedRequest<'de>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RequestSeed {
    type Value = ScannedRequest<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a V2 inference request")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut id, mut parameters, mut inputs, mut outputs) = (None, None, None, None);
        while let Some(field) = map.next_key::<RequestField>()? {
            match field {
                RequestField::Id => once(&mut id, map.next_value::<Option<String>>()?, "id")?,
                RequestField::Parameters => {
                    once(&mut parameters, map.next_value::<Option<Parameters>>()?, "parameters")?
                }
                RequestField::Inputs => once(&mut inputs, map.next_value_seed(TensorsSeed)?, "inputs")?,
                RequestField::Outputs => {
                    once(&mut outputs, map.next_value::<Option<Vec<RawRequestedOutput>>>()?, "outputs")?
                }
                RequestField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(ScannedRequest {
            id: id.flatten(),
            parameters: parameters.flatten(),
            inputs: inputs.ok_or_else(|| de::Error::missing_field("inputs"))?,
            outputs: outputs.flatten(),
        })
    }
}

struct ScannedResponse<'a> {
    model_name: &'a RawValue,
    model_version: Option<String>,
    id: Option<&'a RawValue>,
    parameters: Option<Parameters>,
    outputs: Vec<ScannedTensor<'a>>,
}

struct ResponseSeed;

impl<'de> DeserializeSeed<'de> for ResponseSeed {
    type Value = ScannedResponse<'de>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ResponseSeed {
    type Value = ScannedResponse<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a V2 inference response")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut model_name, mut model_version, mut id, mut parameters, mut outputs) = (None, None, None, None, None);
        while let Some(field) = map.next_key::<ResponseField>()? {
            match field {
                // Kept as text: where it lies is what `relabel_response` patches.
                ResponseField::ModelName => once(&mut model_name, map.next_value::<&'de RawValue>()?, "model_name")?,
                ResponseField::ModelVersion => {
                    once(&mut model_version, map.next_value::<Option<String>>()?, "model_version")?
                }
                // `null` kept too: patched in place rather than a second `id` key added.
                ResponseField::Id => once(&mut id, map.next_value::<&'de RawValue>()?, "id")?,
                ResponseField::Parameters => {
                    once(&mut parameters, map.next_value::<Option<Parameters>>()?, "parameters")?
                }
                ResponseField::Outputs => once(&mut outputs, map.next_value_seed(TensorsSeed)?, "outputs")?,
                ResponseField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(ScannedResponse {
            model_name: model_name.ok_or_else(|| de::Error::missing_field("model_name"))?,
            model_version: model_version.flatten(),
            id,
            parameters: parameters.flatten(),
            outputs: outputs.ok_or_else(|| de::Error::missing_field("outputs"))?,
        })
    }
}

/// Runs `seed` over the whole of `json`; `None` if it refuses anything.
fn scan<'a, S: DeserializeSeed<'a>>(json: &'a [u8], seed: S) -> Option<S::Value> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let v = seed.deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(v)
}

/// The checks `decode` makes of one tensor once parsed (its datatype, its
/// data's place and element count against its shape); `None` where it would
/// refuse it, or where the data is not in the JSON (binary section, shared
/// memory): the full decode handles those.
fn check_tensor(t: ScannedTensor<'_>) -> Option<TensorHeader> {
    let datatype = DataType::parse(t.datatype)?;
    if t.parameters.as_ref().is_some_and(|p| p.contains_key(BINARY_DATA_SIZE) || p.contains_key(SHM_REGION)) {
        return None;
    }
    let got = match t.data {
        Data::Absent => return None,
        Data::Counted(n) => n,
        Data::Raw(raw) => {
            let mut n = Count::default();
            let mut de = serde_json::Deserializer::from_str(raw.get());
            Flatten::new(datatype, &mut n).deserialize(&mut de).ok()?;
            n.0
        }
    };
    // `Tensor::validate`: the shape's count (no negative dim, no overflow),
    // its size in bytes (no overflow), then the data's.
    let want = element_count(&t.shape).ok()?;
    if let Some(size) = datatype.size() {
        want.checked_mul(size)?;
    }
    (got == want).then_some(TensorHeader { name: t.name, datatype, shape: t.shape })
}

/// `decode`'s handling of a `binary_data`-style flag: absent, or a boolean.
fn take_bool(p: &mut Parameters, key: &str) -> Option<Option<bool>> {
    match p.remove(key) {
        None => Some(None),
        Some(Value::Bool(b)) => Some(Some(b)),
        Some(_) => None,
    }
}

/// The one pass over a request body; `None` for anything the full decode must see.
fn scan_request(body: &Bytes) -> Option<InferRequest> {
    let raw = scan(body, RequestSeed)?;
    if raw.inputs.is_empty() {
        return None;
    }
    let mut tensors = Vec::with_capacity(raw.inputs.len());
    for t in raw.inputs {
        let t = check_tensor(t)?;
        if tensors.iter().any(|o: &TensorHeader| o.name == t.name) {
            return None;
        }
        tensors.push(t);
    }
    let mut parameters = raw.parameters.unwrap_or_default();
    // Binary outputs are re-encoded from the answer's tensors: not for this path.
    if take_bool(&mut parameters, "binary_data_output")?.unwrap_or(false) {
        return None;
    }
    let mut outputs = Vec::new();
    for o in raw.outputs.unwrap_or_default() {
        let mut parameters = o.parameters.unwrap_or_default();
        let binary = take_bool(&mut parameters, "binary_data")?;
        if binary == Some(true) || parameters.contains_key(SHM_REGION) {
            return None;
        }
        outputs.push(RequestedOutput { name: o.name, binary, parameters });
    }
    Some(InferRequest {
        id: raw.id,
        inputs: Vec::new(),
        outputs,
        parameters,
        binary_output: false,
        metadata: Default::default(),
        raw_json: Some(RawJson { body: body.clone(), unbuilt: Some(Unbuilt { tensors, ..Unbuilt::default() }) }),
    })
}

/// Where `part` (a slice of `whole`) starts and ends in it.
fn range_in(whole: &[u8], part: &str) -> Range<usize> {
    let start = part.as_ptr() as usize - whole.as_ptr() as usize;
    start..start + part.len()
}

/// The one pass over a response body; `None` for anything the full decode must see.
fn scan_response(body: &Bytes) -> Option<InferResponse> {
    let raw = scan(body, ResponseSeed)?;
    let model_name: String = serde_json::from_str(raw.model_name.get()).ok()?;
    let id: Option<String> = match raw.id {
        Some(v) => serde_json::from_str(v.get()).ok()?,
        None => None,
    };
    let tensors = raw.outputs.into_iter().map(check_tensor).collect::<Option<Vec<_>>>()?;
    let unbuilt = Unbuilt {
        tensors,
        model_name: Some(range_in(body, raw.model_name.get())),
        id: raw.id.map(|v| range_in(body, v.get())),
    };
    Some(InferResponse {
        model_name,
        model_version: raw.model_version,
        id,
        parameters: raw.parameters.unwrap_or_default(),
        outputs: Vec::new(),
        raw_json: Some(RawJson { body: body.clone(), unbuilt: Some(unbuilt) }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;

    /// What `decode_request` makes of a request, as the check keeps it.
    fn headers(ts: &[Tensor]) -> Vec<TensorHeader> {
        ts.iter().map(|t| TensorHeader { name: t.name.clone(), datatype: t.datatype, shape: t.shape.clone() }).collect()
    }

    /// The check and the decode agree on `body`: the same error text, or the
    /// same request (built from the checked body when the check took it).
    /// Returns whether the one pass took it.
    fn agree(body: &str) -> bool {
        let bytes = Bytes::copy_from_slice(body.as_bytes());
        let decoded = decode_request(&bytes, None);
        let checked = check_request(&bytes);
        match (&decoded, &checked) {
            (Err(a), Err(b)) => {
                assert_eq!(a.to_string(), b.to_string(), "{body}");
                assert!(scan_request(&bytes).is_none(), "{body}: taken by the pass, refused by the decode");
                false
            }
            (Ok(want), Ok(got)) if got.inputs_pending() => {
                let unbuilt = got.raw_json.as_ref().and_then(|r| r.unbuilt.as_ref()).expect("pending");
                assert_eq!(unbuilt.tensors, headers(&want.inputs), "{body}");
                assert_eq!(got.raw_json.as_ref().map(|r| &r.body), Some(&bytes), "{body}");
                assert!(got.inputs.is_empty());
                let built = build_request(got.clone()).unwrap_or_else(|e| panic!("{body}: {e}"));
                assert!(!built.inputs_pending());
                assert_eq!(built.raw_json, Some(RawJson::decoded(bytes.clone())));
                let built = InferRequest { raw_json: None, ..built };
                assert_eq!(&built, want, "{body}");
                // What the pipeline reads without the tensors is the decode's.
                let bare = InferRequest { inputs: Vec::new(), raw_json: None, ..want.clone() };
                assert_eq!(InferRequest { raw_json: None, ..got.clone() }, bare, "{body}");
                true
            }
            (Ok(want), Ok(got)) => {
                assert_eq!(got, want, "{body}");
                false
            }
            (a, b) => panic!("{body}: decode {a:?}, check {b:?}"),
        }
    }

    fn one(dt: &str, shape: &str, data: &str) -> String {
        format!(r#"{{"inputs":[{{"name":"x","shape":{shape},"datatype":"{dt}","data":{data}}}]}}"#)
    }

    /// `data` before `datatype`: counted once the datatype is known.
    fn data_first(dt: &str, shape: &str, data: &str) -> String {
        format!(r#"{{"inputs":[{{"data":{data},"name":"x","shape":{shape},"datatype":"{dt}"}}]}}"#)
    }

    #[test]
    fn valid_requests_are_taken_and_say_what_the_decode_says() {
        let mut bodies = vec![
            r#"{"id":"7","inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2.5],[3,4]]},{"name":"s","shape":[2],"datatype":"BYTES","data":["a","b\u0000c"]}],"outputs":[{"name":"y","parameters":{"binary_data":false,"k":"v"}}],"parameters":{"binary_data_output":false,"sequence_id":3,"priority":1}}"#.to_string(),
            r#"{"inputs":[{"name":"x","shape":[3],"datatype":"INT64","parameters":{"p":"q"},"data":[-1,0,9007199254740993],"extra":{"ignored":[1]}}],"model_name":"m"}"#.into(),
            r#"{"inputs":[{"datatype":"UINT8","shape":[2],"data":[1,2],"name":"late_name"}]}"#.into(),
            r#"{"\u0069nputs":[{"n\u0061me":"x","shape":[2],"datatype":"INT8","data":[1,2]}]}"#.into(),
            r#"  {"id":null,"parameters":null,"outputs":null,"inputs":[{"name":"x","shape":[],"datatype":"FP64","data":0.5,"parameters":null}]}  "#.into(),
            r#"{"inputs":[{"name":"x","shape":[0,3],"datatype":"FP32","data":[]},{"name":"y","shape":[1],"datatype":"BOOL","data":[[[true]]]}]}"#.into(),
            r#"{"inputs":[{"name":"x","shape":[2,1],"datatype":"FP32","data":[[1],2]}]}"#.into(),
        ];
        let boundaries = [
            ("BOOL", "[true,false]"),
            ("UINT8", "[0,255]"),
            ("UINT16", "[0,65535]"),
            ("UINT32", "[0,4294967295]"),
            ("UINT64", "[0,18446744073709551615]"),
            ("INT8", "[-128,127]"),
            ("INT16", "[-32768,32767]"),
            ("INT32", "[-2147483648,2147483647]"),
            ("INT64", "[-9223372036854775808,9223372036854775807]"),
            ("FP16", "[65504,-65504]"),
            ("BF16", "[1.5,-3.3e38]"),
            ("FP32", "[3.4028234e38,-1e-45]"),
            ("FP64", "[1.7976931348623157e308,5e-324]"),
            ("FP32", "[1,-2]"),
            ("BYTES", r#"["hello",""]"#),
            // Boundaries: exponents, long digits, -0, nesting.
            ("FP16", "[9999,-0]"),
            ("FP16", "[65519,-65504.4]"),
            ("FP32", "[99999999999999999999999999999999999999,0.000001]"),
            ("FP32", "[1e2,-1E-2]"),
            ("FP32", "[340282346638528859811704183484516925440,0]"),
            ("INT64", "[999999999999999999,-999999999999999999]"),
            ("UINT8", "[0,0]"),
            ("FP64", "[1,[2.5]]"),
        ];
        for (dt, data) in boundaries {
            bodies.push(one(dt, "[2]", data));
            bodies.push(data_first(dt, "[2]", data));
            bodies.push(one(dt, "[1,2]", &format!("[{data}]")));
        }
        for body in &bodies {
            assert!(agree(body), "{body}: not taken by the one pass");
        }
    }

    #[test]
    fn every_refusal_reads_as_the_decodes() {
        let overflow = "[4294967296,4294967296,4294967296]";
        let mut bodies: Vec<String> = vec![
            "".into(),
            "{".into(),
            "[]".into(),
            "null".into(),
            r#"{"inputs":[]}"#.into(),
            r#"{}"#.into(),
            r#"{"inputs":{}}"#.into(),
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]} x"#.into(),
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}],"inputs":[]}"#.into(),
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1],"data":[2]}]}"#.into(),
            r#"{"inputs":[{"name":"x","name":"y","shape":[1],"datatype":"FP32","data":[1]}]}"#.into(),
            r#"{"inputs":[{"shape":[1],"datatype":"FP32","data":[1]}]}"#.into(),
            r#"{"inputs":[{"name":"x","datatype":"FP32","data":[1]}]}"#.into(),
            r#"{"inputs":[{"name":"x","shape":[1],"data":[1]}]}"#.into(),
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]}"#.into(),
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":null}]}"#.into(),
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[null]}]}"#.into(),
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":{"a":1}}]}"#.into(),
            r#"{"inputs":[{"name":1,"shape":[1],"datatype":"FP32","data":[1]}]}"#.into(),
            r#"{"inputs":[{"name":"x","shape":[1.5],"datatype":"FP32","data":[1]}]}"#.into(),
            r#"{"inputs":[{"name":"x","shape":"1","datatype":"FP32","data":[1]}]}"#.into(),
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP\u0033\u0032","data":[1]}]}"#.into(),
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"fp32","data":[1]}]}"#.into(),
            r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP33","data":[1,2]}]}"#.into(),
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]},{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]}"#.into(),
            r#"{"inputs":[{"name":"a","shape":[1],"datatype":"BOGUS","data":[1]},{"name":"b","shape":[1],"datatype":"INT8","data":[999]}]}"#.into(),
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT8","data":[999]}],"#.into(),
            r#"{"id":7,"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]}"#.into(),
            r#"{"parameters":[],"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]}"#.into(),
            r#"{"parameters":{"binary_data_output":"yes"},"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]}"#.into(),
            r#"{"outputs":[{"name":"y","parameters":{"binary_data":1}}],"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]}"#.into(),
            r#"{"outputs":[{"parameters":{}}],"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]}"#.into(),
            r#"{"outputs":{"name":"y"},"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]}"#.into(),
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#.into(),
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1],"parameters":{"binary_data_size":4}}]}"#.into(),
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","parameters":7,"data":[1]}]}"#.into(),
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"BYTES","data":["\ud800"]}]}"#.into(),
        ];
        // (datatype, shape, data) whose counts, shapes or values are wrong.
        let cases = [
            ("FP32", "[3]", "[1,2]"),
            ("FP32", "[1]", "[1,2]"),
            ("FP32", "[2,2]", "[[1,2],[3]]"),
            ("FP32", "[-1]", "[1]"),
            ("FP32", "[2,-3]", "[]"),
            ("FP32", overflow, "[1]"),
            ("UINT8", overflow, "[]"),
            ("BYTES", overflow, "[]"),
            ("FP64", "[1099511627776]", "[1]"),
            ("FP64", "[2305843009213693952]", "[1]"),
            ("FP64", "[9223372036854775807]", "[1]"),
            ("BYTES", "[9223372036854775807]", r#"["a"]"#),
            ("FP32", "[2]", "[1,[2,[3]]]"),
            ("FP32", "[]", "[]"),
            ("FP32", "[1]", "1e39"),
            ("UINT8", "[1]", "[256]"),
            ("UINT8", "[1]", "[-1]"),
            ("INT8", "[1]", "[-129]"),
            ("INT8", "[1]", "[128]"),
            ("UINT16", "[1]", "[65536]"),
            ("INT16", "[1]", "[-32769]"),
            ("UINT32", "[1]", "[4294967296]"),
            ("INT32", "[1]", "[2147483648]"),
            ("INT32", "[1]", "[1.5]"),
            ("INT32", "[1]", "[1e2]"),
            ("UINT64", "[1]", "[-1]"),
            ("UINT64", "[1]", "[18446744073709551616]"),
            ("INT64", "[1]", "[9223372036854775808]"),
            ("INT64", "[1]", "[-9223372036854775809]"),
            ("BOOL", "[1]", "[1]"),
            ("BOOL", "[1]", r#"["true"]"#),
            ("BOOL", "[1]", "[0.0]"),
            ("BYTES", "[1]", "[1]"),
            ("BYTES", "[1]", "[true]"),
            ("BYTES", "[2]", r#"["a",["b",null]]"#),
            ("FP32", "[1]", "[true]"),
            ("FP32", "[1]", r#"["1.0"]"#),
            ("FP32", "[1]", "[1e39]"),
            ("FP32", "[1]", "[-3.5e38]"),
            ("FP16", "[1]", "[70000]"),
            ("FP16", "[1]", "[-65520]"),
            ("BF16", "[1]", "[3.4e38]"),
            ("FP64", "[1]", "[1e309]"),
            ("FP64", "[1]", "[NaN]"),
            ("FP32", "[1]", "[Infinity]"),
            ("FP32", "[1]", "[-Infinity]"),
            ("FP32", "[1]", "[1,]"),
            ("FP32", "[1]", "[01]"),
            ("FP32", "[1]", "[1.]"),
            ("FP32", "[1]", "[.5]"),
            ("FP32", "[1]", "[-]"),
            ("FP32", "[1]", "[+1]"),
            ("FP32", "[1]", "[999999999999999999999999999999999999999]"),
            ("BF16", "[1]", "[999999999999999999999999999999999999999]"),
            ("FP16", "[1]", "[65520]"),
            ("INT8", "[1]", "[-0.0]"),
            ("UINT16", "[1]", "[1.0]"),
            ("UINT8", "[1]", "[-0]"),
            ("INT32", "[1]", "[-0]"),
            ("UINT64", "[1]", "[1e0]"),
            ("INT64", "[1]", "[-9223372036854775809]"),
            ("FP32", "[2]", "[[1],[[2],{}]]"),
            ("INT8", "[2]", r#"[[1],["2"]]"#),
        ];
        for (dt, shape, data) in cases {
            bodies.push(one(dt, shape, data));
            bodies.push(data_first(dt, shape, data));
        }
        for body in &bodies {
            assert!(!agree(body), "{body}: taken by the one pass");
            if !body.contains("binary_data_size") {
                let e = check_request(&Bytes::copy_from_slice(body.as_bytes())).expect_err(body);
                assert!(!e.to_string().is_empty());
            }
        }
    }

    /// Bodies the check leaves to the full decode though they are good: data
    /// not in the JSON, or an answer to be re-encoded.
    #[test]
    fn data_elsewhere_or_binary_outputs_go_to_the_full_decode() {
        let bodies = [
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","parameters":{"shared_memory_region":"r","shared_memory_byte_size":4}}]}"#,
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}],"parameters":{"binary_data_output":true}}"#,
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}],"outputs":[{"name":"y","parameters":{"binary_data":true}}]}"#,
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}],"outputs":[{"name":"y","parameters":{"shared_memory_region":"r"}}]}"#,
        ];
        for body in bodies {
            assert!(!agree(body), "{body}");
            assert!(decode_request(&Bytes::copy_from_slice(body.as_bytes()), None).is_ok(), "{body}");
        }
    }

    /// Random damage to good bodies: whatever the check takes, the decode
    /// takes with the same result; whatever it refuses reads the same.
    #[test]
    fn damaged_bodies_are_judged_as_the_decode_judges_them() {
        let seeds = [
            one("FP32", "[2,2]", "[[1,2.5],[3,4]]"),
            one("INT8", "[3]", "[-128,0,127]"),
            one("UINT64", "[2]", "[0,18446744073709551615]"),
            one("BYTES", "[2]", r#"["ab","c"]"#),
            one("BOOL", "[2]", "[true,false]"),
            one("FP16", "[1]", "[65504]"),
            data_first("INT32", "[2]", "[2147483647,-2147483648]"),
            r#"{"id":"a","parameters":{"binary_data_output":false},"outputs":[{"name":"y","parameters":{"binary_data":false}}],"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]},{"name":"z","shape":[1],"datatype":"FP32","data":[2]}]}"#.into(),
        ];
        let alphabet = b"[]{},:\"-0123456789.eE xnulltrueINTFPBOOL\\";
        let mut rng = fastrand::Rng::with_seed(16);
        let (mut taken, mut total) = (0, 0);
        for seed in &seeds {
            for _ in 0..400 {
                let mut b = seed.as_bytes().to_vec();
                for _ in 0..rng.usize(1..=3) {
                    let i = rng.usize(0..b.len());
                    match rng.u8(0..3) {
                        0 => b[i] = alphabet[rng.usize(0..alphabet.len())],
                        1 => {
                            b.remove(i);
                        }
                        _ => b.insert(i, alphabet[rng.usize(0..alphabet.len())]),
                    }
                }
                let Ok(body) = String::from_utf8(b) else { continue };
                total += 1;
                taken += agree(&body) as usize;
            }
        }
        // Both sides were exercised.
        assert!(taken > 0 && taken < total, "{taken} of {total} taken");
    }

    fn response_agrees(body: &str) -> bool {
        let bytes = Bytes::copy_from_slice(body.as_bytes());
        match (decode_response(&bytes, None), check_response(&bytes)) {
            (Err(a), Err(b)) => {
                assert_eq!(a.to_string(), b.to_string(), "{body}");
                false
            }
            (Ok(want), Ok(got)) if got.outputs_pending() => {
                let unbuilt = got.raw_json.as_ref().and_then(|r| r.unbuilt.as_ref()).expect("pending");
                assert_eq!(unbuilt.tensors, headers(&want.outputs), "{body}");
                assert_eq!(
                    (&got.model_name, &got.model_version, &got.id, &got.parameters),
                    (&want.model_name, &want.model_version, &want.id, &want.parameters),
                    "{body}"
                );
                assert!(got.outputs.is_empty());
                true
            }
            (Ok(want), Ok(got)) => {
                assert_eq!(got, want, "{body}");
                false
            }
            (a, b) => panic!("{body}: decode {a:?}, check {b:?}"),
        }
    }

    #[test]
    fn responses_are_checked_like_the_decode_checks_them() {
        let good = [
            r#"{"model_name":"m","model_version":"2","id":"7","parameters":{"a":1},"outputs":[{"name":"y","shape":[2],"datatype":"FP64","data":[0.1,-2]}]}"#,
            r#"{"outputs":[{"name":"y","shape":[1,2],"datatype":"BYTES","data":[["a","b"]]},{"name":"y","shape":[],"datatype":"INT8","data":3}],"model_name":"m\u00e9","id":null,"extra":[1]}"#,
            r#"{"model_name":"m","outputs":[]}"#,
        ];
        for body in good {
            assert!(response_agrees(body), "{body}: not taken");
        }
        let bad = [
            r#"{"outputs":[]}"#,
            r#"{"model_name":"m"}"#,
            r#"{"model_name":5,"outputs":[]}"#,
            r#"{"model_name":"m","id":5,"outputs":[]}"#,
            r#"{"model_name":"m","model_name":"n","outputs":[]}"#,
            r#"{"model_name":"m","outputs":[{"name":"y","shape":[3],"datatype":"FP32","data":[1,2]}]}"#,
            r#"{"model_name":"m","outputs":[{"name":"y","shape":[1],"datatype":"INT8","data":[300]}]}"#,
            r#"{"model_name":"m","outputs":[{"name":"y","shape":[1],"datatype":"FP32"}]}"#,
            r#"{"model_name":"m","outputs":[{"name":"y","shape":[4294967296,4294967296],"datatype":"FP32","data":[]}]}"#,
            r#"{"model_name":"m","outputs":[{"name":"y","shape":[1],"datatype":"FP32","data":[1]}]"#,
            r#"{"model_name":"m","outputs":[{"name":"y","shape":[1],"datatype":"F32","data":[1]}]}"#,
        ];
        for body in bad {
            assert!(!response_agrees(body), "{body}: taken");
            assert!(check_response(&Bytes::copy_from_slice(body.as_bytes())).is_err(), "{body}");
        }
        // Outputs in the binary section or shared memory: the full decode.
        let elsewhere = r#"{"model_name":"m","outputs":[{"name":"y","shape":[1],"datatype":"FP32","parameters":{"shared_memory_region":"r"}}]}"#;
        assert!(!response_agrees(elsewhere));
    }

    #[test]
    fn relabelling_patches_only_the_model_name_and_id() {
        let body = r#" { "id" : null , "model_name" : "backend-name", "outputs":[{"name":"y","shape":[1],"datatype":"FP32","data":[1.5]}]}"#;
        let check = |body: &str| check_response(&Bytes::copy_from_slice(body.as_bytes())).unwrap();
        let text = |r: &InferResponse| String::from_utf8(r.raw_json.as_ref().unwrap().body.to_vec()).unwrap();

        // Nothing changed: the very bytes.
        let mut r = check(r#"{"model_name":"m","id":"1","outputs":[]}"#);
        relabel_response(&mut r, "m", Some("1"));
        assert_eq!(text(&r), r#"{"model_name":"m","id":"1","outputs":[]}"#);
        relabel_response(&mut r, "m", None);
        assert_eq!(text(&r), r#"{"model_name":"m","id":"1","outputs":[]}"#);

        // A renamed model and a null id: both values replaced in place.
        let mut r = check(body);
        relabel_response(&mut r, "pub\"lic", Some("req-1"));
        let want = r#" { "id" : "req-1" , "model_name" : "pub\"lic", "outputs":[{"name":"y","shape":[1],"datatype":"FP32","data":[1.5]}]}"#;
        assert_eq!(text(&r), want);
        assert_eq!((r.model_name.as_str(), r.id.as_deref()), ("pub\"lic", Some("req-1")));
        assert!(r.outputs_pending());
        let again = decode_response(&r.raw_json.as_ref().unwrap().body, None).unwrap();
        assert_eq!((again.model_name.as_str(), again.id.as_deref()), ("pub\"lic", Some("req-1")));
        assert_eq!(again.outputs, decode_response(&Bytes::from_static(body.as_bytes()), None).unwrap().outputs);

        // No id in the answer: one is added, once.
        let mut r = check(r#"{"model_name":"m","outputs":[]}"#);
        relabel_response(&mut r, "m", Some("x"));
        assert_eq!(text(&r), r#"{"id":"x","model_name":"m","outputs":[]}"#);
        relabel_response(&mut r, "m", Some("x"));
        assert_eq!(text(&r), r#"{"id":"x","model_name":"m","outputs":[]}"#);

        // A decoded answer is not this function's business.
        let mut r = decode_response(&Bytes::from_static(br#"{"model_name":"m","outputs":[]}"#), None).unwrap();
        relabel_response(&mut r, "n", Some("x"));
        assert_eq!((r.model_name.as_str(), r.raw_json.is_none()), ("m", true));
    }
}
