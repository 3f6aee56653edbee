//! Triton's REST extensions: model configuration, statistics, the
//! repository API and system shared memory registration (`crate::shm`). Models of an embedded backend are answered here
//! (`crate::triton`); a model served by a remote backend is passed through
//! to the default upstream (that Triton's own answer), when there is one.

use http::HeaderMap;
use pingora_proxy::Session;
use serde::Deserialize;
use switchyard_config::Limits;

use super::body;
use super::reply::Reply;
use crate::auth::{Action, Principal};
use crate::error::{Error, ErrorKind};
use crate::routing::RoutingTable;
use crate::shm;
use crate::triton::{self, Owner};

/// What a Triton REST request gets.
pub enum Outcome {
    Reply(Box<Reply>),
    /// Not ours: proxy it to the default upstream unchanged.
    PassThrough,
}

fn json(v: &serde_json::Value) -> Outcome {
    match serde_json::to_vec(v) {
        Ok(body) => Outcome::Reply(Box::new(Reply::json(200, body))),
        Err(e) => Outcome::Reply(Box::new(Reply::error(&Error::internal(format!("cannot encode the answer: {e}"))))),
    }
}

fn error(e: &Error) -> Outcome {
    Outcome::Reply(Box::new(Reply::error(e)))
}

/// A model no route knows: the default upstream may (its answer, as before Switchyard).
fn unrouted(e: Error, passthrough: bool) -> Outcome {
    if passthrough && e.kind == ErrorKind::NotFound {
        return Outcome::PassThrough;
    }
    error(&e)
}

/// A model its backend answers for, when Switchyard has nobody to ask.
fn remote(what: &str, model: &str, backend: &str, passthrough: bool) -> Outcome {
    if passthrough {
        return Outcome::PassThrough;
    }
    error(&Error::new(
        ErrorKind::NotImplemented,
        format!(
            "{what} of model '{model}' is answered by its backend `{backend}`, and this listener has no \
             default_upstream to pass the request to"
        ),
    ))
}

/// `GET /v2/models/{m}[/versions/{v}]/config`.
pub fn model_config(
    headers: &HeaderMap,
    table: &RoutingTable,
    model: &str,
    version: Option<&str>,
    passthrough: bool,
    principal: Option<&Principal>,
) -> Outcome {
    match triton::owner(table, headers, model, version, principal, Action::Metadata) {
        Err(e) => unrouted(e, passthrough),
        Ok(Owner::Remote(sel)) => remote("the configuration", model, &sel.variant.backend_name, passthrough),
        Ok(Owner::Embedded(sel, t)) => {
            let v = sel.target.version.as_deref();
            match t.describe(&sel.target.name, v) {
                Err(e) => error(&e.into()),
                Ok(d) => {
                    let batching = sel.variant.batcher.as_ref().map(|b| b.config());
                    json(&triton::config_json(&triton::config(model, &d, batching)))
                }
            }
        }
    }
}

/// `GET /v2/models[/{m}[/versions/{v}]]/stats`.
pub fn model_stats(
    headers: &HeaderMap,
    table: &RoutingTable,
    model: Option<&str>,
    version: Option<&str>,
    passthrough: bool,
    principal: Option<&Principal>,
) -> Outcome {
    match model {
        Some(m) => match triton::owner(table, headers, m, version, principal, Action::Metadata) {
            Ok(Owner::Remote(sel)) => return remote("the statistics", m, &sel.variant.backend_name, passthrough),
            Err(e) => return unrouted(e, passthrough),
            Ok(Owner::Embedded(..)) => {}
        },
        None if passthrough && triton::repositories(table).is_empty() => return Outcome::PassThrough,
        None => {}
    }
    match triton::statistics_of(table, headers, model, version, principal) {
        Err(e) => error(&e),
        Ok(stats) => json(&serde_json::json!({
            "model_stats": stats.iter().map(triton::statistics_json).collect::<Vec<_>>()
        })),
    }
}

#[derive(Deserialize, Default)]
struct IndexBody {
    #[serde(default)]
    ready: bool,
}

#[derive(Deserialize, Default)]
struct ControlBody {
    #[serde(default)]
    parameters: serde_json::Map<String, serde_json::Value>,
}

/// A JSON body, or the default for an empty one.
async fn read_json<T: for<'de> Deserialize<'de> + Default>(session: &mut Session, limits: &Limits) -> Result<T, Error> {
    let body = body::read(session, limits).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&body).map_err(|e| Error::bad_request(format!("invalid JSON in request body: {e}")))
}

/// `POST /v2/repository/index`.
pub async fn repository_index(
    session: &mut Session,
    table: &RoutingTable,
    limits: &Limits,
    passthrough: bool,
    principal: Option<&Principal>,
) -> Outcome {
    if triton::repositories(table).is_empty() {
        if passthrough {
            return Outcome::PassThrough;
        }
        return error(&Error::not_found(
            "no route for POST /v2/repository/index: no route uses an embedded (onnx) repository, and this \
             listener has no default_upstream",
        ));
    }
    let body: IndexBody = match read_json(session, limits).await {
        Ok(b) => b,
        Err(e) => return error(&e),
    };
    json(&triton::index_json(&triton::index(table, principal), body.ready))
}

/// `POST /v2/repository/models/{m}/load` or `/unload`.
pub async fn repository_control(
    session: &mut Session,
    table: &RoutingTable,
    limits: &Limits,
    model: &str,
    load: bool,
    passthrough: bool,
    principal: Option<&Principal>,
) -> Outcome {
    let headers = session.req_header().headers.clone();
    let (sel, t) = match triton::owner(table, &headers, model, None, principal, Action::Admin) {
        Err(e) => return unrouted(e, passthrough),
        Ok(Owner::Remote(sel)) => {
            let what = if load { "loading" } else { "unloading" };
            return remote(what, model, &sel.variant.backend_name, passthrough);
        }
        Ok(Owner::Embedded(sel, t)) => (sel, t),
    };
    let body: ControlBody = match read_json(session, limits).await {
        Ok(b) => b,
        Err(e) => return error(&e),
    };
    if let Err(e) = triton::check_control_parameters(body.parameters.keys().map(String::as_str), load) {
        return error(&e);
    }
    let name = sel.target.name.clone();
    let result = if load { t.load(&name).await } else { t.unload(&name).await };
    match result {
        Ok(()) => Outcome::Reply(Box::new(Reply::json(200, Vec::new()))),
        Err(e) => error(&e.into()),
    }
}

/// `GET /v2/systemsharedmemory[/region/{r}]/status`.
pub fn shm_status(region: Option<&str>) -> Outcome {
    match shm::status(region) {
        Err(e) => error(&e),
        Ok(regions) => json(&serde_json::Value::Array(
            regions
                .iter()
                .map(
                    |r| serde_json::json!({"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size}),
                )
                .collect(),
        )),
    }
}

#[derive(Deserialize, Default)]
struct RegisterBody {
    key: Option<String>,
    #[serde(default)]
    offset: u64,
    byte_size: Option<u64>,
}

/// `POST /v2/systemsharedmemory/region/{r}/register`.
pub async fn shm_register(session: &mut Session, limits: &Limits, region: &str) -> Outcome {
    let body: RegisterBody = match read_json(session, limits).await {
        Ok(b) => b,
        Err(e) => return error(&e),
    };
    let (Some(key), Some(byte_size)) = (body.key, body.byte_size) else {
        return error(&Error::bad_request("register needs 'key' and 'byte_size' in the request body"));
    };
    match shm::register(region, &key, body.offset, byte_size) {
        Ok(()) => Outcome::Reply(Box::new(Reply::json(200, Vec::new()))),
        Err(e) => error(&e),
    }
}

/// `POST /v2/systemsharedmemory[/region/{r}]/unregister`.
pub fn shm_unregister(region: Option<&str>) -> Outcome {
    shm::unregister(region);
    Outcome::Reply(Box::new(Reply::json(200, Vec::new())))
}
