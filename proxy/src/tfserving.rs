//! What TF Serving's REST (`http::tfserving`) and gRPC (`grpc::tfserving`)
//! front ends share: which servable a request names (`TfServable`) and how
//! it maps onto variants — a version label names a variant (its name, or a
//! label it declares), a version the variant pinned to it, neither the A/B
//! split — TF Serving's words for an unknown servable, the model signatures
//! requests are typed by (cached), the refusal of classify/regress where no
//! TF Serving backend relays them, and the status and metadata reads.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue};
use serde_json::Value as Json;
use switchyard_runtime::codec::tfserving::{self as tfs, InputSpec, VersionState};
use switchyard_runtime::{Backend, ModelTarget};

use crate::auth::{Action, Principal};
use crate::error::{Error, ErrorKind};
use crate::pipeline::{self, Call, Routed};
use crate::routing::{Route, RoutingTable, Selection};

/// Which servable of a model a TF Serving request names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TfServable<'a> {
    /// No version or label: the A/B split picks.
    Latest,
    Version(&'a str),
    Label(&'a str),
}

/// The TF Serving method a request calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TfMethod {
    Predict,
    Classify,
    Regress,
}

/// A model's predict signature: what requests are typed and checked by.
#[derive(Debug)]
pub struct Signature {
    pub inputs: Vec<InputSpec>,
    pub outputs: Vec<String>,
}

/// How long a model's signature is trusted before its backend is asked again.
const SIGNATURE_TTL: Duration = Duration::from_secs(10);
/// Signatures kept at most; past it the map starts over.
const MAX_SIGNATURES: usize = 1024;

type SignatureKey = (usize, ModelTarget);
type Signatures = RwLock<HashMap<SignatureKey, (Instant, Arc<Signature>)>>;

/// Model signatures per (backend, target), so a request costs no metadata
/// call to a remote backend.
fn signatures() -> &'static Signatures {
    static CACHE: OnceLock<Signatures> = OnceLock::new();
    CACHE.get_or_init(|| RwLock::new(HashMap::new()))
}

/// The signature of `target` on `backend`, cached for `SIGNATURE_TTL`.
pub async fn signature(backend: &Arc<dyn Backend>, target: &ModelTarget) -> Result<Arc<Signature>, Error> {
    let key = (Arc::as_ptr(backend) as *const () as usize, target.clone());
    let hit = signatures()
        .read()
        .ok()
        .and_then(|m| m.get(&key).filter(|(at, _)| at.elapsed() < SIGNATURE_TTL).map(|(_, s)| s.clone()));
    if let Some(s) = hit {
        return Ok(s);
    }
    let meta = backend.model_metadata(target).await?;
    let sig = Arc::new(Signature { inputs: tfs::input_specs(&meta)?, outputs: tfs::output_names(&meta)? });
    if let Ok(mut m) = signatures().write() {
        if m.len() >= MAX_SIGNATURES {
            m.clear();
        }
        m.insert(key, (Instant::now(), sig.clone()));
    }
    Ok(sig)
}

/// TF Serving's words for a servable nobody serves.
pub fn not_found(model: &str, servable: TfServable<'_>) -> Error {
    let spec = match servable {
        TfServable::Latest => format!("Latest({model})"),
        TfServable::Version(v) => format!("Specific({model}, {v})"),
        TfServable::Label(l) => format!("Specific({model}, {l})"),
    };
    Error::not_found(format!("Servable not found for request: {spec}"))
}

/// The route, or TF Serving's not-found.
pub fn route<'t>(table: &'t RoutingTable, model: &str, servable: TfServable<'_>) -> Result<&'t Route, Error> {
    table.route(model).map_err(|_| not_found(model, servable))
}

/// The variant name a label resolves to, or TF Serving's refusal.
pub fn label_variant<'r>(route: &'r Route, label: &str) -> Result<&'r str, Error> {
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

/// Names the servable on an inference: a label's variant (chosen before
/// weights) or the version; `Latest` leaves the A/B split to pick.
pub fn name_servable<'a>(route: &'a Route, servable: TfServable<'a>, call: &mut Call<'a>) -> Result<(), Error> {
    match servable {
        TfServable::Label(l) => call.variant = Some(label_variant(route, l)?),
        TfServable::Version(v) => call.version = Some(v),
        TfServable::Latest => {}
    }
    Ok(())
}

/// The backend and target whose signature types a request, once routed:
/// every variant of a model shares its signature, so the selected one when
/// the client named it by a label (`labelled`), else the first serving one.
pub fn typed_by(routed: &Routed<'_>, labelled: bool) -> (Arc<dyn Backend>, ModelTarget) {
    let r = routed.selection.route;
    let idx = match labelled {
        true => routed.selection.index,
        false => r.variants.iter().position(|v| v.weight > 0.0).unwrap_or(0),
    };
    (r.variants[idx].backend.clone(), r.target_of(idx, routed.model, routed.version))
}

/// Classify and regress on a variant whose backend relays neither (not a TF
/// Serving server, `crate::tfrelay`): every signature it serves is a predict
/// signature (TF Serving's refusal, word for word, and what to do).
pub fn refuse_method(method: TfMethod, model: &str, predict_hint: &str) -> Error {
    let (kind, name) = match method {
        TfMethod::Classify => ("classification", "classify"),
        _ => ("regression", "regress"),
    };
    Error::bad_request(format!(
        "Expected {kind} signature method_name to be tensorflow/serving/{name}. Was: {} \
         (Switchyard serves model '{model}' through its predict signature '{}' only: use {predict_hint})",
        tfs::model::PREDICT_METHOD,
        tfs::DEFAULT_SIGNATURE
    ))
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

/// Whether `s` is a TF version number (digits only).
fn numeric(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// The TF version number a variant serves as: its pinned version, else the
/// backend's newest it reports, else 0 (TF versions are numbers).
pub fn version_of(sel_version: Option<&str>, meta: Option<&Json>) -> String {
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

/// `GetModelStatus`: every serving variant's version (or the one named),
/// AVAILABLE when its backend has it ready. A named version nobody serves is
/// TF Serving's not-found.
pub async fn version_states(
    headers: &HeaderMap,
    table: &RoutingTable,
    model: &str,
    servable: TfServable<'_>,
    principal: Option<&Principal>,
) -> Result<Vec<VersionState>, Error> {
    pipeline::authorize(principal, model, None, Action::Metadata)?;
    let r = route(table, model, servable)?;
    let indices: Vec<usize> = match servable {
        TfServable::Latest => (0..r.variants.len()).filter(|&i| r.variants[i].shadow_percent.is_none()).collect(),
        _ => vec![select(table, headers, model, servable, principal)?.index],
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
        // TF Serving answers a version it does not serve with not-found.
        if let Some(s) = states.first() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("{} ({})", not_found(model, servable).message, s.unavailable.as_deref().unwrap_or("")),
            ));
        }
    }
    Ok(states)
}

/// What `GetModelMetadata` reads: the selected variant's model metadata and
/// the version it serves as.
pub struct ModelMetadata {
    /// `x-switchyard-variant` of the variant read.
    pub variant: HeaderValue,
    pub version: String,
    /// V2 model metadata.
    pub meta: Json,
}

/// `GetModelMetadata`: the metadata of the variant the request selects.
pub async fn model_metadata(
    headers: &HeaderMap,
    table: &RoutingTable,
    model: &str,
    servable: TfServable<'_>,
    principal: Option<&Principal>,
) -> Result<ModelMetadata, Error> {
    pipeline::authorize(principal, model, None, Action::Metadata)?;
    let sel = select(table, headers, model, servable, principal)?;
    let meta = sel.variant.backend.model_metadata(&sel.target).await?;
    Ok(ModelMetadata {
        variant: sel.variant.header_value.clone(),
        version: version_of(sel.target.version.as_deref(), Some(&meta)),
        meta,
    })
}
