//! The seed ticket's (ASTR-90) data-port API: `POST /ml/models/{m}/predict`
//! (its `InferenceRequest` / `InferenceResponse`, mapped onto the model's
//! signature and run through the shared lifecycle) and
//! `POST /ml/models/{m}/feedback` (ground truth joined to served answers).

use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use pingora_proxy::Session;
use serde::Deserialize;
use serde_json::{json, Map, Value as Json};
use switchyard_config::{Limits, QualityTask};
use switchyard_runtime::codec::v2;
use switchyard_runtime::{InferRequest, InferResponse, Tensor};
use switchyard_stats::drift::Value;

use super::body;
use super::reply::Reply;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::monitor::features::for_each_value;
use crate::monitor::quality::FeedbackBody;
use crate::pipeline::{self, Call, Exchange};
use crate::protocol::Param;
use crate::routing::RoutingTable;

/// `POST /ml/models/{m}/feedback`.
pub async fn feedback(session: &mut Session, table: &RoutingTable, limits: &Limits, model: &str) -> Reply {
    // An unknown model or one without quality monitoring is told before its body is read.
    if let Err(e) = crate::feedback::tracker(table, model) {
        return Reply::error(&e);
    }
    let bytes = match body::read(session, limits).await {
        Ok(b) => b,
        Err(e) => return Reply::error(&e),
    };
    let body: FeedbackBody = match serde_json::from_slice(&bytes) {
        Ok(b) => b,
        Err(e) => {
            return Reply::error(&Error::bad_request(format!(
                "feedback must be {{\"feedback\": [{{\"request_id\": \"…\", \"label\": …}}]}}: {e}"
            )))
        }
    };
    match crate::feedback::submit(table, model, body.feedback).await {
        Ok(outcome) => Reply::json(200, serde_json::to_vec(&outcome.to_json()).unwrap_or_default()),
        Err(e) => Reply::error(&e),
    }
}

/// The seed ticket's `InferenceRequest`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InferenceRequest {
    request_id: Option<String>,
    model_id: Option<String>,
    /// Input name → (nested) array of values.
    input_data: Map<String, Json>,
    #[serde(default)]
    parameters: Map<String, Json>,
    /// Accepted as the client's (a string or a number); not interpreted.
    #[allow(dead_code)]
    timestamp: Option<Json>,
    /// The sticky key: it pins the user to a variant as the model's sticky header does.
    user_id: Option<String>,
}

/// The model's declared inputs: name → V2 datatype and rank.
type Signature = Vec<(String, String, usize)>;

/// A predict call on a pingora session.
struct PredictExchange<'s> {
    session: &'s mut Session,
    model: &'s str,
    signature: Signature,
    /// The client's headers, with the sticky header set from `user_id`.
    metadata: HeaderMap,
    /// Read and parsed before routing: `user_id` is the sticky key.
    request: Option<InferenceRequest>,
    start: Instant,
    /// Where predictions and confidences are read from, and how.
    output: Option<(String, QualityTask)>,
}

/// Flattens a nested array into values and its shape.
fn flatten(v: &Json, shape: &mut Vec<i64>, depth: usize, out: &mut Vec<Json>) -> Result<(), String> {
    match v {
        Json::Array(items) => {
            if shape.len() == depth {
                shape.push(items.len() as i64);
            } else if shape[depth] != items.len() as i64 {
                return Err("ragged array: rows differ in length".into());
            }
            items.iter().try_for_each(|i| flatten(i, shape, depth + 1, out))
        }
        scalar => {
            if shape.len() != depth {
                return Err("ragged array: values at different depths".into());
            }
            out.push(scalar.clone());
            Ok(())
        }
    }
}

impl PredictExchange<'_> {
    /// `InferenceRequest` → a V2 JSON request the V2 codec decodes and checks.
    fn to_v2(&self, r: InferenceRequest) -> Result<InferRequest, Error> {
        if let Some(m) = r.model_id.as_deref().filter(|m| *m != self.model) {
            return Err(Error::bad_field(
                "model_id",
                format!("model_id '{m}' differs from the path's '{}'", self.model),
            ));
        }
        let mut inputs = Vec::with_capacity(r.input_data.len());
        for (name, value) in &r.input_data {
            let Some((_, datatype, rank)) = self.signature.iter().find(|(n, _, _)| n == name) else {
                let known: Vec<&str> = self.signature.iter().map(|s| s.0.as_str()).collect();
                return Err(Error::bad_field(
                    format!("input_data.{name}"),
                    format!("model '{}' has no input '{name}' (its inputs: {})", self.model, known.join(", ")),
                ));
            };
            let (mut shape, mut data) = (Vec::new(), Vec::new());
            flatten(value, &mut shape, 0, &mut data).map_err(|e| Error::bad_field(format!("input_data.{name}"), e))?;
            // One sample without its batch dimension gets one.
            if shape.len() + 1 == *rank {
                shape.insert(0, 1);
            }
            inputs.push(json!({ "name": name, "datatype": datatype, "shape": shape, "data": data }));
        }
        let mut v2_req = json!({ "inputs": inputs, "parameters": r.parameters });
        if let Some(id) = r.request_id {
            v2_req["id"] = Json::String(id);
        }
        let body = Bytes::from(serde_json::to_vec(&v2_req).map_err(|e| Error::internal(e.to_string()))?);
        Ok(v2::decode_request(&body, None)?)
    }
}

impl Exchange for PredictExchange<'_> {
    type Encoded = Map<String, Json>;

    fn metadata(&self) -> &HeaderMap {
        &self.metadata
    }

    async fn decode(&mut self) -> Result<InferRequest, Error> {
        let r = self.request.take().ok_or_else(|| Error::internal("predict request decoded twice"))?;
        self.to_v2(r)
    }

    fn parameter(&self, name: &str) -> Option<Param<'_>> {
        self.request.as_ref()?.parameters.get(name).and_then(Param::from_json)
    }

    async fn closed(&mut self) {
        self.session.set_abort_on_close(true);
        match self.session.read_body_or_idle(true).await {
            Err(_) => {}
            // Anything but a hang-up: keep waiting for the answer.
            Ok(_) => std::future::pending().await,
        }
    }

    fn encode(&mut self, resp: InferResponse) -> Result<Self::Encoded, Error> {
        let out = match &self.output {
            Some((name, _)) => resp.outputs.iter().find(|t| t.name == *name),
            None => resp.outputs.first(),
        }
        .ok_or_else(|| Error::internal("the model answered without the output predictions are read from"))?;
        let rows = rows(out);
        let classify = !matches!(self.output, Some((_, QualityTask::Regression)));
        let predictions: Vec<Json> = if classify && self.output.is_some() {
            rows.iter().map(|r| json!(argmax(r))).collect()
        } else {
            rows.iter().map(|r| if r.len() == 1 { json!(r[0]) } else { json!(r) }).collect()
        };
        // Confidence: the largest score of each row (a softmax's max), for classifiers.
        let confidence: Json = if classify {
            Json::from(rows.iter().map(|r| r.iter().copied().fold(f64::NEG_INFINITY, f64::max)).collect::<Vec<_>>())
        } else {
            Json::Null
        };
        let mut m = Map::new();
        m.insert("request_id".into(), resp.id.clone().map_or(Json::Null, Json::String));
        m.insert("predictions".into(), Json::from(predictions));
        m.insert("confidence_scores".into(), confidence);
        m.insert("processing_time".into(), json!(self.start.elapsed().as_secs_f64() * 1e3));
        m.insert("model_version".into(), resp.model_version.clone().map_or(Json::Null, Json::String));
        let outputs: Map<String, Json> = resp.outputs.iter().map(|t| (t.name.clone(), json!(t.shape))).collect();
        m.insert("metadata".into(), json!({ "model": self.model, "output_shapes": outputs }));
        Ok(m)
    }
}

async fn read_request(session: &mut Session, limits: &Limits) -> Result<InferenceRequest, Error> {
    let bytes = body::read(session, limits).await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Error::bad_request(format!(
            "not an InferenceRequest (request_id, model_id, input_data, parameters, timestamp, user_id): {e}"
        ))
    })
}

/// A numeric output as rows of `f64`.
fn rows(t: &Tensor) -> Vec<Vec<f64>> {
    let mut rows: Vec<Vec<f64>> = Vec::new();
    for_each_value(t, |r, _, v| {
        if let Value::Number(x) = v {
            if rows.len() <= r {
                rows.resize_with(r + 1, Vec::new);
            }
            rows[r].push(x);
        }
    });
    rows
}

fn argmax(r: &[f64]) -> usize {
    r.iter().enumerate().fold((0, f64::NEG_INFINITY), |b, (i, x)| if *x > b.1 { (i, *x) } else { b }).0
}

/// `POST /ml/models/{m}/predict`.
pub async fn predict(
    session: &mut Session,
    table: &RoutingTable,
    metrics: &Metrics,
    limits: &Limits,
    call: Call<'_>,
) -> Reply {
    let model = call.model;
    let mut headers = session.req_header().headers.clone();
    let request = match read_request(session, limits).await {
        Ok(r) => r,
        Err(e) => return Reply::error(&e),
    };
    // `user_id` pins the user to a variant as the model's sticky header would.
    let sticky = table.route(model).ok().and_then(|r| r.sticky_header.clone());
    if let (Some(h), Some(u)) = (sticky, &request.user_id) {
        match HeaderValue::from_str(u) {
            Ok(v) => {
                headers.insert(h, v);
            }
            Err(_) => return Reply::error(&Error::bad_field("user_id", "user_id must be printable text")),
        }
    }
    // The signature maps `input_data` onto typed tensors; every variant of a
    // model shares it. Content-routing rules may send the request to another model: its signature.
    let params = |name: &str| request.parameters.get(name).and_then(Param::from_json);
    let sel = match pipeline::choose(table, &call, &headers, Some(&params)) {
        Ok(Some(c)) => c.selection,
        Ok(None) => return Reply::error(&Error::internal("content routing asked for read parameters")),
        Err(e) => return Reply::error(&e),
    };
    let meta = match sel.variant.backend.model_metadata(&sel.target).await {
        Ok(m) => m,
        Err(e) => return Reply::error(&e.into()),
    };
    let signature: Signature = meta["inputs"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| {
                    let rank = i["shape"].as_array().map_or(0, |s| s.len());
                    Some((i["name"].as_str()?.to_string(), i["datatype"].as_str()?.to_string(), rank))
                })
                .collect()
        })
        .unwrap_or_default();
    let output = sel.route.quality.as_ref().map(|q| (q.config().output.to_string(), q.config().task));
    let mut x = PredictExchange {
        session,
        model,
        signature,
        metadata: headers,
        request: Some(request),
        start: call.start,
        output,
    };
    let a = pipeline::infer(table, metrics, &mut x, call).await;
    let mut reply = match a.result {
        Ok(mut m) => {
            if let (Some(Json::Object(meta)), Some(v)) = (m.get_mut("metadata"), &a.variant) {
                meta.insert("variant".into(), json!(v.to_str().unwrap_or("")));
            }
            Reply::json(200, serde_json::to_vec(&m).unwrap_or_default())
        }
        Err(e) => Reply::error(&e),
    };
    reply.variant = a.variant;
    reply.batch_rows = a.batch_rows;
    reply.cache = a.cache;
    reply.overhead = Some(a.overhead);
    reply.rule = a.rule;
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_arrays_flatten_with_their_shape() {
        let (mut shape, mut data) = (Vec::new(), Vec::new());
        flatten(&json!([[1, 2, 3], [4, 5, 6]]), &mut shape, 0, &mut data).unwrap();
        assert_eq!((shape, data.len()), (vec![2, 3], 6));
        let (mut shape, mut data) = (Vec::new(), Vec::new());
        assert!(flatten(&json!([[1, 2], [3]]), &mut shape, 0, &mut data).unwrap_err().contains("ragged"));
    }

    #[test]
    fn argmax_picks_the_largest() {
        assert_eq!(argmax(&[0.1, 0.7, 0.2]), 1);
    }
}
