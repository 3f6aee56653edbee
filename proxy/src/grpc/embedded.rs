//! ModelConfig, ModelStatistics and the Repository RPCs for models an
//! embedded backend serves, answered with Triton's messages
//! (`crate::triton`). Each returns `None` (or `false`) for a model a remote
//! backend serves, which the caller then passes through.

use http::HeaderMap;
use prost::Message;
use switchyard_runtime::codec::grpc::pb;
use tonic::Status;

use super::exchange::version_opt;
use crate::auth::{Action, Principal};
use crate::error::Error;
use crate::respond;
use crate::routing::RoutingTable;
use crate::triton::{self, Owner};

fn status(e: Error) -> Status {
    respond::grpc_status(&e)
}

pub fn model_config(
    table: &RoutingTable,
    headers: &HeaderMap,
    m: &pb::ModelConfigRequest,
    principal: Option<&Principal>,
) -> Result<Option<pb::ModelConfigResponse>, Status> {
    let owner = triton::owner(table, headers, &m.name, version_opt(&m.version), principal, Action::Metadata);
    let Owner::Embedded(sel, t) = owner.map_err(status)? else {
        return Ok(None);
    };
    let d = t.describe(&sel.target.name, sel.target.version.as_deref()).map_err(|e| status(e.into()))?;
    let batching = sel.variant.batcher.as_ref().map(|b| b.config());
    let config = triton::config(&m.name, &d, batching);
    Ok(Some(pb::ModelConfigResponse { config: config.encode_to_vec().into() }))
}

pub fn model_statistics(
    table: &RoutingTable,
    headers: &HeaderMap,
    m: &pb::ModelStatisticsRequest,
    principal: Option<&Principal>,
) -> Result<Option<pb::ModelStatisticsResponse>, Status> {
    let model = (!m.name.is_empty()).then_some(m.name.as_str());
    match model {
        Some(name) => {
            let owner = triton::owner(table, headers, name, version_opt(&m.version), principal, Action::Metadata);
            if let Owner::Remote(_) = owner.map_err(status)? {
                return Ok(None);
            }
        }
        // No model named: the embedded models' statistics, unless only remote backends serve.
        None if triton::repositories(table).is_empty() => return Ok(None),
        None => {}
    }
    let stats = triton::statistics_of(table, headers, model, version_opt(&m.version), principal).map_err(status)?;
    Ok(Some(pb::ModelStatisticsResponse { model_stats: stats.iter().map(|s| s.encode_to_vec().into()).collect() }))
}

/// The embedded repositories' models the principal may read the metadata of.
pub fn repository_index(
    table: &RoutingTable,
    m: &pb::RepositoryIndexRequest,
    principal: Option<&Principal>,
) -> Option<pb::RepositoryIndexResponse> {
    if triton::repositories(table).is_empty() {
        return None;
    }
    let models = triton::index(table, principal)
        .into_iter()
        .filter(|e| !m.ready || e.state == "READY")
        .map(|e| pb::repository_index_response::ModelIndex {
            name: e.name,
            version: e.version.unwrap_or_default(),
            state: e.state.to_owned(),
            reason: e.reason,
        })
        .collect();
    Some(pb::RepositoryIndexResponse { models })
}

/// Loads or unloads an embedded model; `false`: the model is a remote backend's.
pub async fn repository_control<'a>(
    table: &RoutingTable,
    headers: &HeaderMap,
    model: &str,
    parameters: impl Iterator<Item = &'a str>,
    load: bool,
    principal: Option<&Principal>,
) -> Result<bool, Status> {
    // Administrative: `model:{m}:admin`, whichever backend serves it.
    let Owner::Embedded(sel, t) =
        triton::owner(table, headers, model, None, principal, Action::Admin).map_err(status)?
    else {
        return Ok(false);
    };
    triton::check_control_parameters(parameters, load).map_err(status)?;
    let r = if load { t.load(&sel.target.name).await } else { t.unload(&sel.target.name).await };
    r.map_err(|e| status(e.into()))?;
    Ok(true)
}
