//! Ground truth for served answers, whatever the protocol: the checks
//! `POST /ml/models/{m}/feedback` and gRPC `switchyard.ml.v1.Feedback/Submit`
//! share (the model exists and tracks quality, the batch is not too large)
//! before the model's `QualityTracker` joins the labels.

use std::sync::Arc;

use crate::error::Error;
use crate::monitor::quality::{FeedbackItem, FeedbackOutcome, QualityTracker, MAX_FEEDBACK_ITEMS};
use crate::routing::RoutingTable;

/// The model's feedback join: 404 for an unknown model, 400 for one without quality monitoring.
pub fn tracker<'t>(table: &'t RoutingTable, model: &str) -> Result<&'t Arc<QualityTracker>, Error> {
    let route = table.routes.get(model).ok_or_else(|| Error::not_found(format!("unknown model '{model}'")))?;
    route.quality.as_ref().ok_or_else(|| {
        Error::bad_request(format!(
            "model '{model}' does not track prediction quality (set models.{model}.monitoring.quality)"
        ))
    })
}

/// Joins a batch of labels to the model's answers. Errors: those of [`tracker`],
/// and 400 for a batch over `MAX_FEEDBACK_ITEMS` (naming the `feedback` field).
pub async fn submit(table: &RoutingTable, model: &str, items: Vec<FeedbackItem>) -> Result<FeedbackOutcome, Error> {
    let tracker = tracker(table, model)?;
    if items.len() > MAX_FEEDBACK_ITEMS {
        return Err(Error::bad_field(
            "feedback",
            format!("feedback: {} items in one call; send at most {MAX_FEEDBACK_ITEMS}", items.len()),
        ));
    }
    Ok(tracker.feedback(items).await)
}
