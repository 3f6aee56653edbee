//! TensorFlow Serving's REST API on the data port: `:predict` through the
//! shared lifecycle (`TfExchange` decodes row/columnar JSON against the
//! model's signature and encodes `predictions`/`outputs`), `:classify` and
//! `:regress` refused as TF Serving refuses a predict-only signature, model
//! status and metadata from the selected variant's backend. A version label
//! names a variant (its name, or a label it declares); `versions/{v}` the
//! variant pinned to that version; neither: the A/B split. Errors are TF
//! Serving's `{"error": "…"}` with its status codes.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use http::HeaderMap;
use pingora_proxy::Session;
use switchyard_config::Limits;
use switchyard_runtime::codec::tfserving::{self as tfs, Format, InputSpec, VersionState};
use switchyard_runtime::{Backend, InferRequest, InferResponse, ModelTarget};

use super::body;
use super::classify::{TfMethod, TfServable};
use super::reply::Reply;
use crate::auth::{Action, Principal};
use crate::error::{Error, ErrorKind};
use crate::metrics::Metrics;
use crate::pipeline::{self, Call, Exchange};
use crate::protocol::Param;
use crate::routing::{Route, RoutingTable, Selection};

/// How long a model's signature is trusted before its backend is asked again.
const SIGNATURE_TTL: Duration = Duration::from_secs(10);
/// Signatures kept at most; past it the map starts over.
const MAX_SIGNATURES: usize = 1024;

type SignatureKey = (usize, ModelTarget);
type Signatures = RwLock<HashMap<SignatureKey, (Instant, Arc<[InputSpec]>)>>;

/// Model signatures (the inputs a REST body is typed by) per (backend, target),
/// so a request costs no metadata call to a remote backend.
fn signatures() -> &'static Signatures {
    static CACHE: OnceLock<Signatures> = OnceLock::new();
    CACHE.get_or_init(|| RwLock::new(HashMap::new()))
}

/// The inputs of `target` on `backend`, cached for `SIGNATURE_TTL`.
async fn signature(backend: &Arc<dyn Backend>, target: &ModelTarget) -> Result<Arc<[InputSpec]>, Error> {
    let key = (Arc::as_ptr(backend) as *const () as usize, target.clone());
    let hit = signatures()
        .read()
        .ok()
        .and_then(|m| m.get(&key).filter(|(at, _)| at.elapsed() < SIGNATURE_TTL).map(|(_, s)| s.clone()));
    if let Some(s) = hit {
        return Ok(s);
    }
    let meta = backend.model_metadata(target).await?;
    let specs: Arc<[InputSpec]> = tfs::input_specs(&meta)?.into();
    if let Ok(mut m) = signatures().write() {
        if m.len() >= MAX_SIGNATURES {
            m.clear();
        }
        m.insert(key, (Instant::now(), specs.clone()));
    }
    Ok(specs)
}

/// TF Serving's words for a servable nobody serves.
fn not_found(model: &str, servable: TfServable<'_>) -> Error {
    let spec = match servable {
        TfServable::Latest => format!("Latest({model})"),
        TfServable::Version(v) => format!("Specific({model}, {v})"),
        TfServable::Label(l) => format!("Specific({model}, {l})"),
    };
    Error::not_found(format!("Servable not found for request: {spec}"))
}

/// The route, or TF Serving's 404.
fn route<'t>(table: &'t RoutingTable, model: &str, servable: TfServable<'_>) -> Result<&'t Route, Error> {
    table.route(model).map_err(|_| not_found(model, servable))
}

/// The variant name a label resolves to, or TF Serving's refusal.
fn label_variant<'r>(route: &'r Route, label: &str) -> Result<&'r str, Error> {
    route.variant_for_label(label).map(|v| v.name.as_ref()).ok_or_else(|| {
        let known: Vec<&str> = route
            .variants
            .iter()
            .flat_map(|v| std::iter::once(v.name.as_ref()).chain(v.labels.iter().map(|l| l.as_ref())))
            .collect();
        Error::bad_request(format!(
            "Unrecognized servable version label: {label} (labels of model '{}': {})",
            route.name,
            known.join(", ")
        ))
    })
}

/// Selection for status/metadata reads: label → its variant, else as a V2 read.
fn select<'t>(
    table: &'t RoutingTable,
    headers: &HeaderMap,
    model: &str,
    servable: TfServable<'_>,
    principal: Option<&Principal>,
) -> Result<Selection<'t>, Error> {
    let r = route(table, model, servable)?;
    match servable {
        TfServable::Label(l) => pipeline::select_named(table, model, None, label_variant(r, l)?),
        TfServable::Version(v) => pipeline::select(table, model, Some(v), headers, principal),
        TfServable::Latest => pipeline::select(table, model, None, headers, principal),
    }
}

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
        // Every variant of a model shares its signature: the labelled one, else the first serving one.
        let r = routed.selection.route;
        let typed_idx = match self.labelled {
            true => routed.selection.index,
            false => r.variants.iter().position(|v| v.weight > 0.0).unwrap_or(0),
        };
        self.typed_by =
            Some((r.variants[typed_idx].backend.clone(), r.target_of(typed_idx, routed.model, routed.version)));
        self.signature_routed = routed.matched_parameter("signature_name");
    }

    async fn decode(&mut self) -> Result<InferRequest, Error> {
        let doc = match self.early.take() {
            Some(doc) => doc,
            None => self.read_json().await?,
        };
        let (backend, target) =
            self.typed_by.as_ref().ok_or_else(|| Error::internal("TF Serving body decoded before routing"))?;
        let inputs = signature(backend, target).await?;
        let routed = if self.signature_routed { tfs::signature_name(&doc) } else { None };
        let p = tfs::decode_predict_doc(&doc, &inputs, routed)?;
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
    let r = match route(table, call.model, servable) {
        Ok(r) => r,
        Err(e) => return Reply::error(&e),
    };
    if method != TfMethod::Predict {
        // Every signature Switchyard serves is a predict signature (TF Serving's refusal, word for word).
        let (kind, name) = match method {
            TfMethod::Classify => ("classification", "classify"),
            _ => ("regression", "regress"),
        };
        return Reply::error(&Error::bad_request(format!(
            "Expected {kind} signature method_name to be tensorflow/serving/{name}. Was: {} \
             (Switchyard serves model '{}' through its predict signature '{}' only: use :predict)",
            tfs::model::PREDICT_METHOD,
            call.model,
            tfs::DEFAULT_SIGNATURE
        )));
    }
    match servable {
        TfServable::Label(l) => match label_variant(r, l) {
            Ok(v) => call.variant = Some(v),
            Err(e) => return Reply::error(&e),
        },
        TfServable::Version(v) => call.version = Some(v),
        TfServable::Latest => {}
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
    reply
}

/// The TF version number a variant serves as: its pinned version, else the
/// backend's newest it reports, else 0 (TF versions are numbers).
fn version_of(sel_version: Option<&str>, meta: Option<&serde_json::Value>) -> String {
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if let Some(v) = sel_version.filter(|v| numeric(v)) {
        return v.to_string();
    }
    meta.and_then(|m| m["versions"].as_array())
        .and_then(|vs| {
            vs.iter().filter_map(|v| v.as_str()).filter(|v| numeric(v)).max_by_key(|v| v.parse::<u64>().ok())
        })
        .unwrap_or("0")
        .to_string()
}

/// `GET /v1/models/{m}[/versions/{v}|/labels/{l}]`: every serving variant's
/// version (or the one named), AVAILABLE when its backend has it ready.
pub async fn status(
    headers: &HeaderMap,
    table: &RoutingTable,
    model: &str,
    servable: TfServable<'_>,
    principal: Option<&Principal>,
) -> Reply {
    if let Err(e) = pipeline::authorize(principal, model, None, Action::Metadata) {
        return Reply::error(&e);
    }
    let r = match route(table, model, servable) {
        Ok(r) => r,
        Err(e) => return Reply::error(&e),
    };
    let indices: Vec<usize> = match servable {
        TfServable::Latest => (0..r.variants.len()).filter(|&i| r.variants[i].shadow_percent.is_none()).collect(),
        _ => match select(table, headers, model, servable, principal) {
            Ok(sel) => vec![sel.index],
            Err(e) => return Reply::error(&e),
        },
    };
    let mut states: Vec<VersionState> = Vec::new();
    for i in indices {
        let v = &r.variants[i];
        let version = match servable {
            TfServable::Version(n) => Some(n),
            _ => None,
        };
        let target = r.target_of(i, model, version);
        let ready = v.backend.model_ready(&target).await;
        let meta = match (&target.version, &ready) {
            (Some(_), _) | (_, Err(_)) | (_, Ok(false)) => None,
            (None, Ok(true)) => v.backend.model_metadata(&target).await.ok(),
        };
        let state = VersionState {
            version: version_of(target.version.as_deref(), meta.as_ref()),
            unavailable: match ready {
                Ok(true) => None,
                Ok(false) => Some(format!("variant '{}' is not ready on backend '{}'", v.name, v.backend_name)),
                Err(e) => Some(format!("variant '{}': {e}", v.name)),
            },
        };
        // Two variants of one version: available when either is.
        match states.iter_mut().find(|s| s.version == state.version) {
            Some(s) if state.unavailable.is_none() => s.unavailable = None,
            Some(_) => {}
            None => states.push(state),
        }
    }
    if let (TfServable::Version(_), true) = (servable, states.iter().all(|s| s.unavailable.is_some())) {
        // TF Serving answers a version it does not serve with 404.
        if let Some(s) = states.first() {
            return Reply::error(&Error::new(
                ErrorKind::NotFound,
                format!("{} ({})", not_found(model, servable).message, s.unavailable.as_deref().unwrap_or("")),
            ));
        }
    }
    Reply::json(200, tfs::status_json(&states).to_string())
}

/// `GET /v1/models/{m}[/versions/{v}|/labels/{l}]/metadata`: the signature def of the selected variant's model.
pub async fn metadata(
    headers: &HeaderMap,
    table: &RoutingTable,
    model: &str,
    servable: TfServable<'_>,
    principal: Option<&Principal>,
) -> Reply {
    if let Err(e) = pipeline::authorize(principal, model, None, Action::Metadata) {
        return Reply::error(&e);
    }
    let sel = match select(table, headers, model, servable, principal) {
        Ok(s) => s,
        Err(e) => return Reply::error(&e),
    };
    let mut reply = match sel.variant.backend.model_metadata(&sel.target).await {
        Ok(meta) => match tfs::metadata_json(model, &version_of(sel.target.version.as_deref(), Some(&meta)), &meta) {
            Ok(doc) => Reply::json(200, doc.to_string()),
            Err(e) => Reply::error(&Error::unencodable(e)),
        },
        Err(e) => Reply::error(&e.into()),
    };
    reply.variant = Some(sel.variant.header_value.clone());
    reply
}
