//! KServe V2 REST handlers: inference through the shared lifecycle
//! (`pipeline::infer`, with `HttpExchange` supplying V2 JSON / binary
//! decoding and encoding), model metadata and readiness, server metadata
//! and the readiness probes.

use http::HeaderMap;
use pingora_proxy::Session;
use switchyard_config::Limits;
use switchyard_runtime::codec::v2;
use switchyard_runtime::tensor::{RawJson, RequestedOutput};
use switchyard_runtime::{InferRequest, InferResponse};

use super::body;
use super::reply::Reply;
use crate::auth::{Action, Principal};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::pipeline::{self, Call, Exchange, Routed};
use crate::protocol::Param;
use crate::routing::RoutingTable;
use crate::shm;

/// What the client asked of the outputs, kept after the request moves to the backend.
#[derive(Default)]
struct OutputPrefs {
    outputs: Vec<RequestedOutput>,
    default_binary: bool,
}

impl OutputPrefs {
    fn binary(&self, name: &str) -> bool {
        self.outputs.iter().find(|o| o.name == name).and_then(|o| o.binary).unwrap_or(self.default_binary)
    }

    /// Whether any output may go out in the binary extension.
    fn any_binary(&self) -> bool {
        self.default_binary || self.outputs.iter().any(|o| o.binary == Some(true))
    }
}

/// A V2 REST inference on a pingora session.
struct HttpExchange<'s> {
    session: &'s mut Session,
    limits: &'s Limits,
    prefs: OutputPrefs,
    /// Whether system shared memory is on, and the outputs that go to it.
    shm: bool,
    shm_out: Vec<shm::OutputTarget>,
    /// `Some` when the body's hash is wanted (`access_log.body_hash`); filled by `decode`.
    body_sha256: Option<Option<String>>,
    body_len: Option<u64>,
    /// The request, decoded before routing when content-routing rules read its parameters.
    early: Option<InferRequest>,
    /// Whether the chosen variant relays V2 JSON (`pipeline::relays_v2_json`);
    /// `None` before routing decided.
    relay: Option<bool>,
}

/// A successful V2 REST answer: body and, for the binary extension, its JSON header's length.
struct Encoded {
    body: bytes::Bytes,
    header_len: Option<usize>,
}

impl Exchange for HttpExchange<'_> {
    type Encoded = Encoded;

    fn metadata(&self) -> &HeaderMap {
        &self.session.req_header().headers
    }

    async fn decode(&mut self) -> Result<InferRequest, Error> {
        match self.early.take() {
            Some(req) => Ok(req),
            None => self.read_and_decode().await,
        }
    }

    /// V2 decoding needs nothing of the route: the whole request is decoded
    /// now, and `decode` hands it over (one read, one parse).
    async fn read_parameters(&mut self) -> Result<(), Error> {
        if self.early.is_none() {
            self.early = Some(self.read_and_decode().await?);
        }
        Ok(())
    }

    fn parameter(&self, name: &str) -> Option<Param<'_>> {
        self.early.as_ref()?.parameters.get(name).and_then(Param::from_json)
    }

    async fn closed(&mut self) {
        self.session.set_abort_on_close(true);
        match self.session.read_body_or_idle(true).await {
            Err(_) => {}
            // Anything but a hang-up: keep waiting for the answer.
            Ok(_) => std::future::pending().await,
        }
    }

    fn body_len(&self) -> Option<u64> {
        self.body_len
    }

    fn routed(&mut self, routed: &Routed<'_>) {
        self.relay = Some(pipeline::relays_v2_json(routed.selection));
    }

    fn encode(&mut self, mut resp: InferResponse) -> Result<Encoded, Error> {
        // The backend's JSON answer, relayed as it came (the lifecycle dropped
        // it if anything changed the answer since).
        if let Some(raw) = resp.raw_json.take() {
            // Outputs only checked (the fast path): the body is the answer. The
            // request's check took no shared memory and no binary outputs.
            if raw.unbuilt.is_some() || (self.shm_out.is_empty() && !self.prefs.any_binary()) {
                return Ok(Encoded { body: raw.body, header_len: None });
            }
        }
        shm::write_outputs(&mut resp, &self.shm_out)?;
        let prefs = &self.prefs;
        let enc = v2::encode_response(&resp, |n| prefs.binary(n)).map_err(Error::unencodable)?;
        Ok(Encoded { body: enc.body, header_len: enc.header_len })
    }
}

impl HttpExchange<'_> {
    /// Reads the body and decodes it: V2 JSON, or the binary extension.
    async fn read_and_decode(&mut self) -> Result<InferRequest, Error> {
        let header_len = body::inference_header_length(self.session.req_header())?;
        let body = body::read(self.session, self.limits).await?;
        self.body_len = Some(body.len() as u64);
        if let Some(h) = &mut self.body_sha256 {
            *h = Some(crate::access_log::body_hash(&body));
        }
        // Plain JSON for a variant that relays it (or not routed yet: a
        // content rule reads the parameters first): checked, not built, when
        // the check can take it (`v2::check_request`, `pipeline::relays_v2_json`).
        let mut req = match header_len {
            None if self.relay != Some(false) => v2::check_request(&body)?,
            _ => v2::decode_request(&body, header_len)?,
        };
        let in_shm = req.inputs.iter().any(|t| t.in_shared_memory());
        self.shm_out = shm::resolve(&mut req, self.shm)?;
        // Only an output's own `binary_data` can differ from the default.
        let outputs = if req.outputs.iter().any(|o| o.binary.is_some()) { req.outputs.clone() } else { Vec::new() };
        self.prefs = OutputPrefs { outputs, default_binary: req.binary_output };
        // Plain JSON both ways: a JSON backend gets the client's own bytes
        // (checked above by the full decode), not a re-encoding of them.
        if req.raw_json.is_none()
            && header_len.is_none()
            && !in_shm
            && self.shm_out.is_empty()
            && !self.prefs.any_binary()
        {
            req.raw_json = Some(RawJson::decoded(body));
        }
        Ok(req)
    }
}

/// `POST /v2/models/{m}[/versions/{v}]/infer`.
pub async fn infer(
    session: &mut Session,
    table: &RoutingTable,
    metrics: &Metrics,
    limits: &Limits,
    call: Call<'_>,
    body_hash: bool,
) -> Reply {
    let mut x = HttpExchange {
        session,
        limits,
        prefs: OutputPrefs::default(),
        shm: table.server.system_shared_memory,
        shm_out: Vec::new(),
        body_sha256: body_hash.then_some(None),
        body_len: None,
        early: None,
        relay: None,
    };
    let a = pipeline::infer(table, metrics, &mut x, call).await;
    let mut reply = match a.result {
        Ok(enc) => Reply {
            status: 200,
            content_type: Some(http::HeaderValue::from_static(if enc.header_len.is_some() {
                "application/octet-stream"
            } else {
                "application/json"
            })),
            header_len: enc.header_len,
            body: enc.body,
            ..Reply::default()
        },
        Err(e) => Reply::error(&e),
    };
    reply.variant = a.variant;
    reply.batch_rows = a.batch_rows;
    reply.cache = a.cache;
    reply.overhead = Some(a.overhead);
    reply.rule = a.rule;
    reply.body_sha256 = x.body_sha256.flatten();
    reply
}

/// `GET /v2/models/{m}[/versions/{v}]` (metadata) or `.../ready`, answered by the variant's backend.
pub async fn model_query(
    headers: &HeaderMap,
    table: &RoutingTable,
    model: &str,
    version: Option<&str>,
    ready: bool,
    principal: Option<&Principal>,
) -> Reply {
    let sel = match pipeline::authorize(principal, model, version, Action::Metadata)
        .and_then(|()| pipeline::select(table, model, version, headers, principal))
    {
        Ok(s) => s,
        Err(e) => return Reply::error(&e),
    };
    let mut reply = if ready {
        match sel.variant.backend.model_ready(&sel.target).await {
            Ok(true) => Reply::json(200, Vec::new()),
            Ok(false) => Reply::error(&Error::unavailable(format!("model '{model}' is not ready"))),
            Err(e) => Reply::error(&e.into()),
        }
    } else {
        match sel.variant.backend.model_metadata(&sel.target).await {
            Ok(mut meta) => {
                // Clients know the model by its public name, whatever the backend calls it.
                if let Some(obj) = meta.as_object_mut() {
                    obj.insert("name".into(), serde_json::Value::from(model));
                }
                match serde_json::to_vec(&meta) {
                    Ok(body) => Reply::json(200, body),
                    Err(e) => Reply::error(&Error::internal(format!("cannot encode model metadata: {e}"))),
                }
            }
            Err(e) => Reply::error(&e.into()),
        }
    };
    reply.variant = Some(sel.variant.header_value.clone());
    reply
}

/// `/ready` and `/v2/health/ready`: every route has a ready backend, and no background task died.
pub async fn readiness(table: &RoutingTable, v2_style: bool) -> Reply {
    let dead = pipeline::dead_tasks();
    if !dead.is_empty() {
        return Reply::error(&Error::unavailable(format!("not ready: {}", dead.join("; "))));
    }
    let unready = pipeline::unready_routes(table).await;
    if !unready.is_empty() {
        return Reply::error(&Error::unavailable(format!("no ready backend for model(s): {}", unready.join(", "))));
    }
    if v2_style {
        Reply::json(200, Vec::new())
    } else {
        // Fleet mode: ready either way (a replica cut off from Redis keeps serving), and says where it stands;
        // so do model sources (a registry that stopped answering leaves what is loaded serving).
        let mut body = String::from(r#"{"status":"ready""#);
        if let Some(fleet) = switchyard_stats::fleet::detail() {
            body.push_str(&format!(r#","fleet":{fleet}"#));
        }
        if let Some(sources) = switchyard_stats::sources::detail() {
            body.push_str(&format!(r#","sources":{sources}"#));
        }
        body.push('}');
        Reply::json(200, body)
    }
}

/// `GET /v2`: server metadata.
pub async fn server_metadata(table: &RoutingTable) -> Reply {
    let (name, version, extensions) = crate::triton::server_metadata(table).await;
    let body = serde_json::json!({"name": name, "version": version, "extensions": extensions});
    Reply::json(200, body.to_string())
}
