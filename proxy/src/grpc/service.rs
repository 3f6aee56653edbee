//! `inference.GRPCInferenceService`: liveness, readiness and metadata
//! answered here; ModelInfer through the shared lifecycle (`exchange`);
//! ModelStreamInfer in `stream`; model configuration, statistics and the
//! repository RPCs answered for embedded models (`crate::triton`) and passed
//! through to v2-grpc backends otherwise (`passthrough`).

use std::sync::Arc;

use switchyard_runtime::codec::grpc::{self as codec, pb};
use tonic::{Request, Response, Status, Streaming};

use super::exchange::{
    answer_metadata, grpc_timeout, note_inference, version_opt, AnswerInfo, Shared, MODEL_INFER_PATH,
};
use super::{embedded, passthrough, stream};
use prost::Message;
use tonic::transport::server::TcpConnectInfo;

use crate::access_log::SharedNote;
use crate::auth::{Action, Principal, SHM_PERMISSION};
use crate::error::Error;
use crate::headers::VARIANT_HEADER;
use crate::pipeline;
use crate::respond;
use crate::shm;

use pb::grpc_inference_service_server::GrpcInferenceService;

/// The principal `edge::Edge` put on the request; `None` when authentication is off.
pub(super) fn principal(ext: &tonic::Extensions) -> Option<Arc<Principal>> {
    ext.get::<Arc<Principal>>().cloned()
}

/// 403 as a gRPC status unless the principal (when auth is on) may do `action` on the model.
fn gate(p: &Option<Arc<Principal>>, model: &str, version: &str, action: Action) -> Result<(), Status> {
    pipeline::authorize(p.as_deref(), model, version_opt(version), action).map_err(|e| respond::grpc_status(&e))
}

/// 403 unless the principal (when auth is on) holds `passthrough`: repository RPCs reach the backend unchanged.
fn gate_passthrough(p: &Option<Arc<Principal>>, rpc: &str) -> Result<(), Status> {
    match p {
        Some(p) => p.require("passthrough", &format!("call {rpc}")).map_err(|e| respond::grpc_status(&e)),
        None => Ok(()),
    }
}

/// 403 unless the principal (when auth is on) holds `shm`: a region maps a file of this host.
fn gate_shm(ext: &tonic::Extensions) -> Result<(), Status> {
    match principal(ext) {
        Some(p) => p.require(SHM_PERMISSION, "use system shared memory regions").map_err(|e| respond::grpc_status(&e)),
        None => Ok(()),
    }
}
#[derive(Clone)]
pub struct FrontEnd {
    pub shared: Arc<Shared>,
}

#[tonic::async_trait]
impl GrpcInferenceService for FrontEnd {
    async fn server_live(&self, _: Request<pb::ServerLiveRequest>) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        let table = self.shared.table.load_full();
        let ready = pipeline::dead_tasks().is_empty() && pipeline::unready_routes(&table).await.is_empty();
        Ok(Response::new(pb::ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let table = self.shared.table.load_full();
        let (md, ext, m) = request.into_parts();
        let p = principal(&ext);
        gate(&p, &m.name, &m.version, Action::Metadata)?;
        let ready = match pipeline::select(&table, &m.name, version_opt(&m.version), md.as_ref(), p.as_deref()) {
            // An unknown model is simply not ready, as Triton answers.
            Err(_) => false,
            Ok(sel) => sel.variant.backend.model_ready(&sel.target).await.unwrap_or_else(|e| {
                tracing::debug!(model = %m.name, error = %e, "model readiness probe failed");
                false
            }),
        };
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        let table = self.shared.table.load_full();
        let (name, version, extensions) = crate::triton::server_metadata(&table).await;
        Ok(Response::new(pb::ServerMetadataResponse { name, version, extensions }))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let table = self.shared.table.load_full();
        let (md, ext, m) = request.into_parts();
        let p = principal(&ext);
        gate(&p, &m.name, &m.version, Action::Metadata)?;
        let sel = pipeline::select(&table, &m.name, version_opt(&m.version), md.as_ref(), p.as_deref())
            .map_err(|e| respond::grpc_status(&e))?;
        let meta =
            sel.variant.backend.model_metadata(&sel.target).await.map_err(|e| respond::grpc_status(&Error::from(e)))?;
        // Clients know the model by its public name, whatever the backend calls it.
        let out = codec::metadata_from_json(&meta, &m.name)
            .map_err(|e| Status::unavailable(format!("backend sent invalid model metadata: {e}")))?;
        let mut resp = Response::new(out);
        resp.metadata_mut().as_mut().insert(VARIANT_HEADER, sel.variant.header_value.clone());
        Ok(resp)
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let (md, ext, msg) = request.into_parts();
        let headers = md.into_headers();
        let p = principal(&ext);
        let note = ext.get::<SharedNote>().cloned();
        let (model, version, bytes_in) = (msg.model_name.clone(), msg.model_version.clone(), msg.encoded_len());
        let client = ext.get::<TcpConnectInfo>().and_then(|c| c.remote_addr()).map(|a| a.ip());
        let body_sha256 = self.shared.guards.body_hash.then(|| crate::access_log::body_hash(&msg.encode_to_vec()));
        let a = self.shared.infer(MODEL_INFER_PATH, &headers, msg, grpc_timeout(&headers), p.as_deref(), client).await;
        note_inference(note.as_ref(), model, Some(version), bytes_in as u64, body_sha256, &a, |r| r.encoded_len());
        let info = AnswerInfo::of(&a);
        let mut resp = Response::new(a.result.map_err(|e| respond::grpc_status(&e))?);
        answer_metadata(resp.metadata_mut().as_mut(), a.variant, &info);
        Ok(resp)
    }

    type ModelStreamInferStream = stream::Responses;

    async fn model_stream_infer(
        &self,
        request: Request<Streaming<pb::ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let (md, ext, inbound) = request.into_parts();
        let client = ext.get::<TcpConnectInfo>().and_then(|c| c.remote_addr()).map(|a| a.ip());
        Ok(Response::new(stream::serve(self.shared.clone(), md.into_headers(), principal(&ext), client, inbound)))
    }

    async fn model_config(
        &self,
        request: Request<pb::ModelConfigRequest>,
    ) -> Result<Response<pb::ModelConfigResponse>, Status> {
        let table = self.shared.table.load_full();
        let (md, ext, m) = request.into_parts();
        let p = principal(&ext);
        gate(&p, &m.name, &m.version, Action::Metadata)?;
        if let Some(resp) = embedded::model_config(&table, md.as_ref(), &m, p.as_deref())? {
            return Ok(Response::new(resp));
        }
        passthrough::model_config(&table, md.as_ref(), p.as_deref(), m).await.map(Response::new)
    }

    async fn model_statistics(
        &self,
        request: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        let table = self.shared.table.load_full();
        let (md, ext, m) = request.into_parts();
        let p = principal(&ext);
        if !m.name.is_empty() {
            gate(&p, &m.name, &m.version, Action::Metadata)?;
        }
        // Every model's, from the embedded repositories: those the principal may read.
        if let Some(resp) = embedded::model_statistics(&table, md.as_ref(), &m, p.as_deref())? {
            return Ok(Response::new(resp));
        }
        if m.name.is_empty() {
            gate_passthrough(&p, "ModelStatistics for every model")?;
        }
        passthrough::model_statistics(&table, md.as_ref(), p.as_deref(), m).await.map(Response::new)
    }

    async fn repository_index(
        &self,
        request: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        let table = self.shared.table.load_full();
        let (_, ext, m) = request.into_parts();
        let p = principal(&ext);
        if let Some(resp) = embedded::repository_index(&table, &m, p.as_deref()) {
            return Ok(Response::new(resp));
        }
        gate_passthrough(&p, "RepositoryIndex")?;
        passthrough::repository_index(&table, m).await.map(Response::new)
    }

    async fn repository_model_load(
        &self,
        request: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        let table = self.shared.table.load_full();
        let (md, ext, m) = request.into_parts();
        let p = principal(&ext);
        // Administrative: `model:{m}:admin` (checked by `embedded`, whichever backend serves it).
        let names = m.parameters.keys().map(String::as_str);
        if embedded::repository_control(&table, md.as_ref(), &m.model_name, names, true, p.as_deref()).await? {
            return Ok(Response::new(pb::RepositoryModelLoadResponse {}));
        }
        passthrough::repository_model_load(&table, md.as_ref(), p.as_deref(), m).await.map(Response::new)
    }

    async fn repository_model_unload(
        &self,
        request: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        let table = self.shared.table.load_full();
        let (md, ext, m) = request.into_parts();
        let p = principal(&ext);
        let names = m.parameters.keys().map(String::as_str);
        if embedded::repository_control(&table, md.as_ref(), &m.model_name, names, false, p.as_deref()).await? {
            return Ok(Response::new(pb::RepositoryModelUnloadResponse {}));
        }
        passthrough::repository_model_unload(&table, md.as_ref(), p.as_deref(), m).await.map(Response::new)
    }

    async fn system_shared_memory_status(
        &self,
        request: Request<pb::SystemSharedMemoryStatusRequest>,
    ) -> Result<Response<pb::SystemSharedMemoryStatusResponse>, Status> {
        self.shm_enabled()?;
        gate_shm(request.extensions())?;
        let m = request.into_inner();
        let regions =
            shm::status((!m.name.is_empty()).then_some(m.name.as_str())).map_err(|e| respond::grpc_status(&e))?;
        let regions = regions
            .iter()
            .map(|r| {
                let s = pb::system_shared_memory_status_response::RegionStatus {
                    name: r.name.clone(),
                    key: r.key.clone(),
                    offset: r.offset,
                    byte_size: r.byte_size,
                };
                (r.name.clone(), s)
            })
            .collect();
        Ok(Response::new(pb::SystemSharedMemoryStatusResponse { regions }))
    }

    async fn system_shared_memory_register(
        &self,
        request: Request<pb::SystemSharedMemoryRegisterRequest>,
    ) -> Result<Response<pb::SystemSharedMemoryRegisterResponse>, Status> {
        self.shm_enabled()?;
        gate_shm(request.extensions())?;
        let m = request.into_inner();
        shm::register(&m.name, &m.key, m.offset, m.byte_size).map_err(|e| respond::grpc_status(&e))?;
        Ok(Response::new(pb::SystemSharedMemoryRegisterResponse {}))
    }

    async fn system_shared_memory_unregister(
        &self,
        request: Request<pb::SystemSharedMemoryUnregisterRequest>,
    ) -> Result<Response<pb::SystemSharedMemoryUnregisterResponse>, Status> {
        self.shm_enabled()?;
        gate_shm(request.extensions())?;
        let m = request.into_inner();
        shm::unregister((!m.name.is_empty()).then_some(m.name.as_str()));
        Ok(Response::new(pb::SystemSharedMemoryUnregisterResponse {}))
    }
}

impl FrontEnd {
    /// The shared memory RPCs exist only when the extension is on.
    fn shm_enabled(&self) -> Result<(), Status> {
        if self.shared.table.load().server.system_shared_memory {
            Ok(())
        } else {
            Err(Status::unimplemented(
                "system shared memory is not enabled on this server (server.system_shared_memory)",
            ))
        }
    }
}
