//! `switchyard.ml.v1.Feedback`: ground truth over gRPC, on the data-plane
//! gRPC listener. The same batch, checks and join as
//! `POST /ml/models/{m}/feedback` (`crate::feedback`), the same `feedback`
//! permission; errors become statuses in `respond` (INVALID_ARGUMENT naming
//! the field, NOT_FOUND for an unknown model).

use serde_json::Value as Json;
use switchyard_runtime::codec::grpc::ml_pb as pb;
use tonic::{Request, Response, Status};

use crate::access_log::SharedNote;
use crate::auth::{Action, Principal};
use crate::error::Error;
use crate::monitor::quality::FeedbackItem;
use crate::respond;

use super::exchange::Shared;

pub use pb::feedback_server::FeedbackServer;

#[derive(Clone)]
pub struct FeedbackService {
    pub shared: std::sync::Arc<Shared>,
}

/// A gRPC label (one per row) as the JSON the shared join reads: a NaN or
/// infinity becomes `null`, which the join rejects as "not a number".
fn label(values: &[f64]) -> Json {
    Json::Array(values.iter().map(|v| serde_json::Number::from_f64(*v).map_or(Json::Null, Json::Number)).collect())
}

#[tonic::async_trait]
impl pb::feedback_server::Feedback for FeedbackService {
    async fn submit(&self, request: Request<pb::SubmitRequest>) -> Result<Response<pb::SubmitResponse>, Status> {
        let (_, ext, m) = request.into_parts();
        let note = ext.get::<SharedNote>().cloned();
        let set_note = |error: Option<&'static str>| {
            if let Some(n) = note.as_ref().and_then(|n| n.lock().ok()).as_deref_mut() {
                n.model = Some(m.model.clone()).filter(|m| !m.is_empty());
                n.error = error;
            }
        };
        let result = self.run(ext.get::<std::sync::Arc<Principal>>().map(|p| &**p), &m).await;
        set_note(result.as_ref().err().map(|e| e.kind.label()));
        result.map(Response::new).map_err(|e| respond::grpc_status(&e))
    }
}

impl FeedbackService {
    async fn run(&self, principal: Option<&Principal>, m: &pb::SubmitRequest) -> Result<pb::SubmitResponse, Error> {
        if m.model.is_empty() {
            return Err(Error::bad_field("model", "model: must name the model the answers came from"));
        }
        crate::pipeline::authorize(principal, &m.model, None, Action::Feedback)?;
        let table = self.shared.table.load_full();
        let items = m
            .feedback
            .iter()
            .map(|i| FeedbackItem { request_id: i.request_id.clone(), label: label(&i.label) })
            .collect();
        let o = crate::feedback::submit(&table, &m.model, items).await?;
        Ok(pb::SubmitResponse {
            model: o.model,
            joined: o.joined,
            unknown: o.unknown,
            rejected: o.rejected.into_iter().map(|(request_id, error)| pb::Rejected { request_id, error }).collect(),
            variants: o
                .variants
                .into_iter()
                .map(|(variant, version, joined)| pb::VariantJoined {
                    variant,
                    version: version.unwrap_or_default(),
                    joined,
                })
                .collect(),
            store: o.store.to_string(),
        })
    }
}
