//! TensorFlow Serving's REST API on the data port: `:predict` through the
//! shared lifecycle (`TfExchange` decodes row/columnar JSON against the
//! model's signature and encodes `predictions`/`outputs`), `:classify` and
//! `:regress` relayed to a `tfserving` backend (`crate::tfrelay`) or refused
//! as TF Serving refuses a predict-only signature, model
//! status and metadata from the selected variant's backend. Labels, versions
//! and the reads are shared with the gRPC front end (`crate::tfserving`).
//! Errors are TF Serving's `{"error": "…"}` with its status codes.

use std::sync::Arc;

use http::HeaderMap;
use pingora_proxy::Session;
use switchyard_config::Limits;
use switchyard_runtime::codec::tfserving::{self as tfs, Format};
use switchyard_runtime::{Backend, InferRequest, InferResponse, ModelTarget, TfVerb};

use super::body;
use super::reply::Reply;
use crate::auth::Principal;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::pipeline::{self, Call, Exchange};
use crate::protocol::Param;
use crate::routing::RoutingTable;
use crate::tfrelay;
use crate::tfserving::{self as shared, TfMethod, TfServable};

/// A TF Serving REST predict on a pingora session.
struct TfExchange<'s> {
    session: &'s mut Session,
    limits: &'s Limits,
    /// Whether the client named its variant by a version label (it then types the body).
    labelled: bool,
    /// The backend and target whose signature types the body, once routed.
    typed_by: Option<(Arc<dyn Backend>, ModelTarget)>,
    /// The body, parsed before routing when content-routing rules read its `signature_name`.
    early: Option<serde_json::Value>,
    /// A content-routing rule matched on `signature_name`: the name chose the
    /// model, and the model's one signature types the body.
    signature_routed: bool,
    format: Format,
    body_len: Option<u64>,
}

impl TfExchange<'_> {
    async fn read_json(&mut self) -> Result<serde_json::Value, Error> {
        let body = body::read(self.session, self.limits).await?;
        self.body_len = Some(body.len() as u64);
        Ok(tfs::parse_json(&body)?)
    }
}

impl Exchange for TfExchange<'_> {
    type Encoded = bytes::Bytes;

    fn metadata(&self) -> &HeaderMap {
        &self.session.req_header().headers
    }

    async fn read_parameters(&mut self) -> Result<(), Error> {
        if self.early.is_none() {
            self.early = Some(self.read_json().await?);
        }
        Ok(())
    }

    /// TF Serving's one request-level parameter: `signature_name`.
    fn parameter(&self, name: &str) -> Option<Param<'_>> {
        match name {
            "signature_name" => tfs::signature_name(self.early.as_ref()?).map(Param::Str),
            _ => None,
        }
    }

    fn routed(&mut self, routed: &pipeline::Routed<'_>) {
        self.typed_by = Some(shared::typed_by(routed, self.labelled));
        self.signature_routed = routed.matched_parameter("signature_name");
    }

    async fn decode(&mut self) -> Result<InferRequest, Error> {
        let doc = match self.early.take() {
            Some(doc) => doc,
            None => self.read_json().await?,
        };
        let (backend, target) =
            self.typed_by.as_ref().ok_or_else(|| Error::internal("TF Serving body decoded before routing"))?;
        let sig = shared::signature(backend, target).await?;
        let routed = if self.signature_routed { tfs::signature_name(&doc) } else { None };
        let p = tfs::decode_predict_doc(&doc, &sig.inputs, routed)?;
        self.format = p.format;
        Ok(p.request)
    }

    async fn closed(&mut self) {
        self.session.set_abort_on_close(true);
        match self.session.read_body_or_idle(true).await {
            Err(_) => {}
            Ok(_) => std::future::pending().await,
        }
    }

    fn body_len(&self) -> Option<u64> {
        self.body_len
    }

    fn encode(&mut self, resp: InferResponse) -> Result<bytes::Bytes, Error> {
        tfs::encode_predict(&resp, self.format).map_err(Error::unencodable)
    }
}

/// `POST /v1/models/{m}[/versions/{v}|/labels/{l}]:{predict|classify|regress}`.
pub async fn predict(
    session: &mut Session,
    table: &RoutingTable,
    metrics: &Metrics,
    limits: &Limits,
    servable: TfServable<'_>,
    method: TfMethod,
    mut call: Call<'_>,
) -> Reply {
    let r = match shared::route(table, call.model, servable) {
        Ok(r) => r,
        Err(e) => return Reply::error(&e),
    };
    if let Err(e) = shared::name_servable(r, servable, &mut call) {
        return Reply::error(&e);
    }
    if let Some(verb) = tfrelay::verb(method) {
        return relay(session, table, metrics, limits, method, verb, call).await;
    }
    let mut x = TfExchange {
        session,
        limits,
        labelled: call.variant.is_some(),
        typed_by: None,
        early: None,
        signature_routed: false,
        format: Format::Row,
        body_len: None,
    };
    let a = pipeline::infer(table, metrics, &mut x, call).await;
    let mut reply = match a.result {
        Ok(body) => Reply::json(200, body),
        Err(e) => Reply::error(&e),
    };
    reply.variant = a.variant;
    reply.batch_rows = a.batch_rows;
    reply.cache = a.cache;
    reply.overhead = Some(a.overhead);
    reply.rule = a.rule;
    reply
}

/// `:classify`/`:regress`: the body as it is to the variant's TF Serving
/// backend, its answer (status and body) as it is back.
async fn relay(
    session: &mut Session,
    table: &RoutingTable,
    metrics: &Metrics,
    limits: &Limits,
    method: TfMethod,
    verb: TfVerb,
    mut call: Call<'_>,
) -> Reply {
    let body = match body::read(session, limits).await {
        Ok(b) => b,
        Err(e) => return Reply::error(&e),
    };
    // A body of unknown size (chunked) is charged its bytes as read: the guards run after.
    call.input_bytes = call.input_bytes.or(Some(body.len() as u64));
    // Read only for content-routing rules; TF Serving judges the body itself.
    let doc: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    let signature = doc.as_ref().and_then(tfs::signature_name);
    let headers = &session.req_header().headers;
    let a = tfrelay::relay(
        table,
        metrics,
        headers,
        call,
        method,
        signature,
        ":predict",
        |(status, _): &(http::StatusCode, bytes::Bytes)| status.as_u16(),
        |relay, target, md| async move { relay.rest(&target, verb, body, md).await },
    )
    .await;
    let mut reply = match a.result {
        Ok((status, body)) => Reply::json(status.as_u16(), body),
        Err(e) => Reply::error(&e),
    };
    reply.variant = a.variant;
    reply.overhead = Some(a.overhead);
    reply.rule = a.rule;
    reply
}

/// `GET /v1/models/{m}[/versions/{v}|/labels/{l}]`: TF Serving's `GetModelStatusResponse`.
pub async fn status(
    headers: &HeaderMap,
    table: &RoutingTable,
    model: &str,
    servable: TfServable<'_>,
    principal: Option<&Principal>,
) -> Reply {
    match shared::version_states(headers, table, model, servable, principal).await {
        Ok(states) => Reply::json(200, tfs::status_json(&states).to_string()),
        Err(e) => Reply::error(&e),
    }
}

/// `GET /v1/models/{m}[/versions/{v}|/labels/{l}]/metadata`: the signature def of the selected variant's model.
pub async fn metadata(
    headers: &HeaderMap,
    table: &RoutingTable,
    model: &str,
    servable: TfServable<'_>,
    principal: Option<&Principal>,
) -> Reply {
    let m = match shared::model_metadata(headers, table, model, servable, principal).await {
        Ok(m) => m,
        Err(e) => return Reply::error(&e),
    };
    let mut reply = match tfs::metadata_json(model, &m.version, &m.meta) {
        Ok(doc) => Reply::json(200, doc.to_string()),
        Err(e) => Reply::error(&Error::unencodable(e)),
    };
    reply.variant = Some(m.variant);
    reply
}
