//! RPCs Switchyard does not implement itself — ModelConfig,
//! ModelStatistics, RepositoryIndex, RepositoryModelLoad/Unload — passed
//! through to the `v2-grpc` backend serving the named model (or the only
//! one, for RPCs that name none), with the model name rewritten as the
//! variant asks.

use http::HeaderMap;
use switchyard_runtime::backend::GrpcPassthrough;
use switchyard_runtime::codec::grpc::pb;
use tonic::Status;

use super::exchange::version_opt;
use crate::auth::Principal;
use crate::pipeline;
use crate::respond;
use crate::routing::{RoutingTable, Selection};

/// The v2-grpc backend a pass-through RPC about `model` goes to, with the selection made for it.
fn backend_for<'t>(
    principal: Option<&Principal>,
    rpc: &str,
    table: &'t RoutingTable,
    headers: &HeaderMap,
    model: &str,
    version: &str,
) -> Result<(Selection<'t>, &'t dyn GrpcPassthrough), Status> {
    let sel = pipeline::select(table, model, version_opt(version), headers, principal)
        .map_err(|e| respond::grpc_status(&e))?;
    match sel.variant.backend.grpc_passthrough() {
        Some(b) => Ok((sel, b)),
        None => Err(Status::unimplemented(format!(
            "{rpc} is passed through to v2-grpc backends only; model '{model}' variant '{}' is served by backend `{}` of kind {}",
            sel.variant.name,
            sel.variant.backend_name,
            sel.variant.backend.kind()
        ))),
    }
}

/// The one v2-grpc backend behind the routes, for pass-through RPCs that name no model.
fn sole_backend<'t>(rpc: &str, table: &'t RoutingTable) -> Result<&'t dyn GrpcPassthrough, Status> {
    let mut found: Vec<(&str, &dyn GrpcPassthrough)> = Vec::new();
    for v in table.all_routes().flat_map(|r| r.variants.iter()) {
        if let Some(b) = v.backend.grpc_passthrough() {
            if !found.iter().any(|(_, f)| std::ptr::addr_eq(*f, b)) {
                found.push((&v.backend_name, b));
            }
        }
    }
    match found.as_slice() {
        [(_, b)] => Ok(*b),
        [] => {
            Err(Status::unimplemented(format!("{rpc} is passed through to a v2-grpc backend, and no route uses one")))
        }
        many => Err(Status::failed_precondition(format!(
            "{rpc} without a model name is ambiguous: routes use several v2-grpc backends ({}); name a model",
            many.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        ))),
    }
}

pub async fn model_config(
    table: &RoutingTable,
    headers: &HeaderMap,
    principal: Option<&Principal>,
    mut m: pb::ModelConfigRequest,
) -> Result<pb::ModelConfigResponse, Status> {
    let (sel, backend) = backend_for(principal, "ModelConfig", table, headers, &m.name, &m.version)?;
    m.name = sel.target.name.to_string();
    m.version = sel.target.version.as_deref().unwrap_or_default().to_owned();
    backend.model_config(m).await
}

pub async fn model_statistics(
    table: &RoutingTable,
    headers: &HeaderMap,
    principal: Option<&Principal>,
    mut m: pb::ModelStatisticsRequest,
) -> Result<pb::ModelStatisticsResponse, Status> {
    let backend = if m.name.is_empty() {
        sole_backend("ModelStatistics", table)?
    } else {
        let (sel, backend) = backend_for(principal, "ModelStatistics", table, headers, &m.name, &m.version)?;
        m.name = sel.target.name.to_string();
        m.version = sel.target.version.as_deref().unwrap_or_default().to_owned();
        backend
    };
    backend.model_statistics(m).await
}

pub async fn repository_index(
    table: &RoutingTable,
    m: pb::RepositoryIndexRequest,
) -> Result<pb::RepositoryIndexResponse, Status> {
    sole_backend("RepositoryIndex", table)?.repository_index(m).await
}

pub async fn repository_model_load(
    table: &RoutingTable,
    headers: &HeaderMap,
    principal: Option<&Principal>,
    mut m: pb::RepositoryModelLoadRequest,
) -> Result<pb::RepositoryModelLoadResponse, Status> {
    let (sel, backend) = backend_for(principal, "RepositoryModelLoad", table, headers, &m.model_name, "")?;
    m.model_name = sel.target.name.to_string();
    backend.repository_model_load(m).await
}

pub async fn repository_model_unload(
    table: &RoutingTable,
    headers: &HeaderMap,
    principal: Option<&Principal>,
    mut m: pb::RepositoryModelUnloadRequest,
) -> Result<pb::RepositoryModelUnloadResponse, Status> {
    let (sel, backend) = backend_for(principal, "RepositoryModelUnload", table, headers, &m.model_name, "")?;
    m.model_name = sel.target.name.to_string();
    backend.repository_model_unload(m).await
}
