//! `inference.GRPCInferenceService`: liveness, readiness and metadata
//! answered here; ModelInfer through the shared lifecycle (`exchange`);
//! ModelStreamInfer in `stream`; model configuration, statistics and the
//! repository RPCs answered for embedded models (`crate::triton`) and passed
//! through to v2-grpc backends otherwise (`passthrough`).

use std::sync::Arc;

use http::HeaderValue;
use switchyard_runtime::codec::grpc::{self as codec, pb};
use tonic::{Request, Response, Status, Streaming};

use super::exchange::{grpc_timeout, version_opt, Shared};
use super::{embedded, passthrough, stream};
use crate::error::Error;
use crate::headers::{BATCH_SIZE_HEADER, CACHE_HEADER, OVERHEAD_HEADER, VARIANT_HEADER};
use crate::pipeline;
use crate::respond;
use crate::shm;

use pb::grpc_inference_service_server::GrpcInferenceService;

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
        let (md, _, m) = request.into_parts();
        let ready = match pipeline::select(&table, &m.name, version_opt(&m.version), md.as_ref()) {
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
        let (md, _, m) = request.into_parts();
        let sel = pipeline::select(&table, &m.name, version_opt(&m.version), md.as_ref())
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
        let (md, _, msg) = request.into_parts();
        let headers = md.into_headers();
        let a = self.shared.infer(&headers, msg, grpc_timeout(&headers)).await;
        let mut resp = Response::new(a.result.map_err(|e| respond::grpc_status(&e))?);
        let h = resp.metadata_mut().as_mut();
        if let Some(v) = a.variant {
            h.insert(VARIANT_HEADER, v);
        }
        h.insert(OVERHEAD_HEADER, HeaderValue::from(a.overhead.as_micros() as u64));
        if let Some(rows) = a.batch_rows {
            h.insert(BATCH_SIZE_HEADER, HeaderValue::from(rows));
        }
        if let Some(status) = a.cache {
            h.insert(CACHE_HEADER, status.header_value());
        }
        Ok(resp)
    }

    type ModelStreamInferStream = stream::Responses;

    async fn model_stream_infer(
        &self,
        request: Request<Streaming<pb::ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let (md, _, inbound) = request.into_parts();
        Ok(Response::new(stream::serve(self.shared.clone(), md.into_headers(), inbound)))
    }

    async fn model_config(
        &self,
        request: Request<pb::ModelConfigRequest>,
    ) -> Result<Response<pb::ModelConfigResponse>, Status> {
        let table = self.shared.table.load_full();
        let (md, _, m) = request.into_parts();
        if let Some(resp) = embedded::model_config(&table, md.as_ref(), &m)? {
            return Ok(Response::new(resp));
        }
        passthrough::model_config(&table, md.as_ref(), m).await.map(Response::new)
    }

    async fn model_statistics(
        &self,
        request: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        let table = self.shared.table.load_full();
        let (md, _, m) = request.into_parts();
        if let Some(resp) = embedded::model_statistics(&table, md.as_ref(), &m)? {
            return Ok(Response::new(resp));
        }
        passthrough::model_statistics(&table, md.as_ref(), m).await.map(Response::new)
    }

    async fn repository_index(
        &self,
        request: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        let table = self.shared.table.load_full();
        let m = request.into_inner();
        if let Some(resp) = embedded::repository_index(&table, &m) {
            return Ok(Response::new(resp));
        }
        passthrough::repository_index(&table, m).await.map(Response::new)
    }

    async fn repository_model_load(
        &self,
        request: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        let table = self.shared.table.load_full();
        let (md, _, m) = request.into_parts();
        let names = m.parameters.keys().map(String::as_str);
        if embedded::repository_control(&table, md.as_ref(), &m.model_name, names, true).await? {
            return Ok(Response::new(pb::RepositoryModelLoadResponse {}));
        }
        passthrough::repository_model_load(&table, md.as_ref(), m).await.map(Response::new)
    }

    async fn repository_model_unload(
        &self,
        request: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        let table = self.shared.table.load_full();
        let (md, _, m) = request.into_parts();
        let names = m.parameters.keys().map(String::as_str);
        if embedded::repository_control(&table, md.as_ref(), &m.model_name, names, false).await? {
            return Ok(Response::new(pb::RepositoryModelUnloadResponse {}));
        }
        passthrough::repository_model_unload(&table, md.as_ref(), m).await.map(Response::new)
    }

    async fn system_shared_memory_status(
        &self,
        request: Request<pb::SystemSharedMemoryStatusRequest>,
    ) -> Result<Response<pb::SystemSharedMemoryStatusResponse>, Status> {
        self.shm_enabled()?;
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
        let m = request.into_inner();
        shm::register(&m.name, &m.key, m.offset, m.byte_size).map_err(|e| respond::grpc_status(&e))?;
        Ok(Response::new(pb::SystemSharedMemoryRegisterResponse {}))
    }

    async fn system_shared_memory_unregister(
        &self,
        request: Request<pb::SystemSharedMemoryUnregisterRequest>,
    ) -> Result<Response<pb::SystemSharedMemoryUnregisterResponse>, Status> {
        self.shm_enabled()?;
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
