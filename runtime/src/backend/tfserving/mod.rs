//! A remote TensorFlow Serving server as a backend (`kind: tfserving`), over
//! its REST API (`rest`) or its gRPC API (`grpc`), with the V2 backends'
//! pooling, endpoints, ejection, probes, timeouts, TLS and forwarding. Every
//! request is typed by the model's signature (`GetModelMetadata`, cached
//! briefly per model and version): V2 datatypes must match the signature's
//! `DT_*` exactly, and a type V2 cannot carry is a 400 that names it.
//! Readiness is the model's own `GetModelStatus` (a version AVAILABLE).
//! Classify and Regress are relayed as they are (`TfRelay`), each on its own
//! transport: REST's JSON to REST, gRPC's messages to gRPC.

mod grpc;
mod rest;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use switchyard_config::{ResolverConfig, TfServingBackend as Config, TfTransport};

use super::contract::{Backend, ModelTarget, TfRelay, TfVerb};
use super::forward::Forwarding;
use super::grpc_pool::GrpcPoolConfig;
use super::http_pool::HttpPoolConfig;
use crate::codec::tfserving::client::TfSignature;
use crate::codec::tfserving::pb::tensorflow::serving as tf;
use crate::error::BackendError;
use crate::tensor::{InferRequest, InferResponse, Tensor};

/// How long a model's signature is trusted before it is asked again (as the
/// TF front end caches signatures): a new model version is seen within it.
const SIGNATURE_TTL: Duration = Duration::from_secs(10);
/// How long a readiness or status call may take.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

enum Transport {
    // Boxed: the HTTP client is several times the size of a channel pool.
    Rest(Box<rest::RestTransport>),
    Grpc(grpc::GrpcTransport),
}

pub struct TfServingBackend {
    transport: Transport,
    /// The `signature_name` every request names.
    signature: Arc<str>,
    timeout: Duration,
    forward: Forwarding,
    signatures: Mutex<HashMap<ModelTarget, (Instant, Arc<TfSignature>)>>,
}

impl TfServingBackend {
    /// Builds the transport (connections are made lazily); needs a tokio runtime.
    pub fn new(name: &str, cfg: &Config, resolver: &ResolverConfig) -> Result<TfServingBackend, String> {
        let transport = match cfg.transport {
            TfTransport::Rest { pool_size } => {
                let pool = HttpPoolConfig {
                    endpoints: &cfg.endpoints,
                    connect_timeout: cfg.connect_timeout,
                    pool_size,
                    health: &cfg.health,
                    tls: cfg.tls.as_ref(),
                };
                Transport::Rest(Box::new(rest::RestTransport::new(name, pool, resolver)?))
            }
            TfTransport::Grpc { max_message_bytes } => {
                let pool = GrpcPoolConfig {
                    endpoints: &cfg.endpoints,
                    connect_timeout: cfg.connect_timeout,
                    health: &cfg.health,
                    tls: cfg.tls.as_ref(),
                };
                Transport::Grpc(grpc::GrpcTransport::new(name, pool, max_message_bytes, resolver)?)
            }
        };
        Ok(TfServingBackend {
            transport,
            signature: cfg.signature_name.clone(),
            timeout: cfg.timeout,
            forward: Forwarding::new(&cfg.forward_headers),
            signatures: Mutex::new(HashMap::new()),
        })
    }

    /// The model's signature: cached, else asked of the server.
    async fn signature(&self, target: &ModelTarget) -> Result<Arc<TfSignature>, BackendError> {
        let now = Instant::now();
        if let Some((at, sig)) = self.signatures.lock().expect("signature cache").get(target) {
            if now.duration_since(*at) < SIGNATURE_TTL {
                return Ok(sig.clone());
            }
        }
        let sig = Arc::new(match &self.transport {
            Transport::Rest(t) => t.signature(target, &self.signature, self.timeout).await?,
            Transport::Grpc(t) => t.signature(target, &self.signature, self.timeout).await?,
        });
        let mut cache = self.signatures.lock().expect("signature cache");
        // Only versions the server knows get here: the map is as large as the served versions.
        cache.retain(|_, (at, _)| now.duration_since(*at) < SIGNATURE_TTL);
        cache.insert(target.clone(), (now, sig.clone()));
        Ok(sig)
    }

    /// The outputs, and the version that ran when the answer says (gRPC's does).
    async fn predict(
        &self,
        target: &ModelTarget,
        sig: &TfSignature,
        req: InferRequest,
    ) -> Result<(Vec<Tensor>, Option<String>), BackendError> {
        match &self.transport {
            Transport::Rest(t) => Ok((t.predict(target, &self.signature, sig, &req, self.timeout).await?, None)),
            Transport::Grpc(t) => t.predict(target, &self.signature, sig, req, self.timeout).await,
        }
    }
}

#[async_trait]
impl Backend for TfServingBackend {
    fn kind(&self) -> &'static str {
        "tfserving"
    }

    fn forwarding(&self) -> Option<&Forwarding> {
        Some(&self.forward)
    }

    async fn infer(&self, target: &ModelTarget, req: InferRequest) -> Result<InferResponse, BackendError> {
        let sig = self.signature(target).await?;
        sig.check_request(&req)?;
        let id = req.id.clone();
        let (outputs, ran) = self.predict(target, &sig, req).await?;
        Ok(InferResponse {
            model_name: target.name.to_string(),
            model_version: ran
                .or_else(|| target.version.as_deref().map(str::to_string))
                .or_else(|| sig.version.clone()),
            id,
            parameters: Default::default(),
            outputs,
            raw_json: None,
        })
    }

    async fn model_metadata(&self, target: &ModelTarget) -> Result<serde_json::Value, BackendError> {
        self.signature(target).await?.v2_metadata(&target.name)
    }

    async fn model_ready(&self, target: &ModelTarget) -> Result<bool, BackendError> {
        match &self.transport {
            Transport::Rest(t) => t.available(target, READY_PROBE_TIMEOUT).await,
            Transport::Grpc(t) => t.available(target, READY_PROBE_TIMEOUT).await,
        }
    }

    async fn ready(&self) -> bool {
        match &self.transport {
            Transport::Rest(t) => t.ready(READY_PROBE_TIMEOUT).await,
            Transport::Grpc(t) => t.ready(READY_PROBE_TIMEOUT).await,
        }
    }

    fn tf_relay(&self) -> Option<&dyn TfRelay> {
        Some(self)
    }
}

/// Why a call cannot cross transports: tf.Example inputs are JSON on REST and
/// protobuf on gRPC, and Switchyard does not convert them.
fn mismatch(verb: TfVerb, client: &str, backend: &str) -> BackendError {
    BackendError::InvalidInput(format!(
        "{} over {client} cannot be relayed: this model's TF Serving backend speaks {backend}, and Switchyard \
         does not convert tf.Example inputs between REST's JSON and gRPC's protobuf (call it over {backend})",
        verb.as_str()
    ))
}

#[async_trait]
impl TfRelay for TfServingBackend {
    async fn rest(
        &self,
        target: &ModelTarget,
        verb: TfVerb,
        body: bytes::Bytes,
        metadata: http::HeaderMap,
    ) -> Result<(http::StatusCode, bytes::Bytes), BackendError> {
        match &self.transport {
            Transport::Rest(t) => t.relay(target, verb, body, &metadata, self.timeout).await,
            Transport::Grpc(_) => Err(mismatch(verb, "REST", "gRPC")),
        }
    }

    async fn classify(
        &self,
        target: &ModelTarget,
        req: tf::ClassificationRequest,
        metadata: http::HeaderMap,
    ) -> Result<tf::ClassificationResponse, BackendError> {
        match &self.transport {
            Transport::Grpc(t) => t.classify(target, req, metadata, self.timeout).await,
            Transport::Rest(_) => Err(mismatch(TfVerb::Classify, "gRPC", "REST")),
        }
    }

    async fn regress(
        &self,
        target: &ModelTarget,
        req: tf::RegressionRequest,
        metadata: http::HeaderMap,
    ) -> Result<tf::RegressionResponse, BackendError> {
        match &self.transport {
            Transport::Grpc(t) => t.regress(target, req, metadata, self.timeout).await,
            Transport::Rest(_) => Err(mismatch(TfVerb::Regress, "gRPC", "REST")),
        }
    }
}
