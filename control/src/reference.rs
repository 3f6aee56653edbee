//! Drift reference capture from live traffic:
//! `POST /ml/models/{m}/drift/reference` with `{"capture": {"samples": N}}`,
//! `{"capture": {"duration": "10m"}}` (or both: whichever ends first;
//! optionally `"variants"`), or `{"reset": true}`.
//!
//! The data plane captures (its drift summarisers feed the window's sampled
//! inputs and outputs into the same `ProfileBuilder` `switchyard profile`
//! uses); this module validates the call, keeps the capture's status, and
//! when the profile arrives writes it beside the state file
//! (`<state file>.references/<model>.profile.json`) and serves it as the
//! model's reference in a new generation (`ControlPlane::set_reference`),
//! recorded in the state file so it survives restarts and reloads until reset.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::capture::{now_secs, reference_path, CaptureStatus};
use crate::error::ControlError;
use crate::plane::ControlPlane;
use crate::serving::CaptureSpec;
use crate::state::CapturedReference;
use crate::supervise;

/// Most rows a `samples` capture may ask for (the data plane keeps every value until it summarises).
pub const MAX_CAPTURE_SAMPLES: u64 = 100_000;
/// Longest capture window.
pub const MAX_CAPTURE_DURATION: Duration = Duration::from_secs(24 * 3600);
/// The supervisor name of capture tasks.
const CAPTURE_TASK: &str = "drift reference capture";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceRequest {
    capture: Option<CaptureBody>,
    #[serde(default)]
    reset: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaptureBody {
    samples: Option<u64>,
    duration: Option<String>,
    variants: Option<Vec<String>>,
}

/// Writes a file whole (temp file + rename), creating its directory.
fn write_file(path: &Path, text: &str) -> Result<(), String> {
    let dir = path.parent().ok_or("no directory")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("renaming {} to {}: {e}", tmp.display(), path.display()))
}

/// The model's reference as `GET /ml/models/{m}/drift` shows it: the captured one or the file's.
pub(crate) fn reference_json(plane: &ControlPlane, model: &str) -> Value {
    let p = plane.published();
    let mut v = match p.references.get(model) {
        Some(r) => json!({
            "source": "captured",
            "path": r.path.display().to_string(),
            "captured_at": r.captured_at,
            "rows": r.rows,
            "variants": r.variants,
            "window": r.window,
        }),
        None => json!({
            "source": "file",
            "path": p.effective.models.get(model).and_then(|m| m.drift.as_ref()).map(|d| d.reference.display().to_string()),
        }),
    };
    if let Some(c) = plane.captures().get(model) {
        v["capture"] = c.to_json();
    }
    v
}

fn audit(who: &str, what: &str, outcome: Result<u64, &str>) {
    let line = switchyard_stats::access_log::Line::new("audit").str("principal", who).str("what", what);
    match outcome {
        Ok(g) => line.num("status", 200).num("generation", g).write(),
        Err(e) => line.str("outcome", "failed").str("error", e).write(),
    }
}

/// `POST /ml/models/{m}/drift/reference`.
pub(crate) async fn reference(
    plane: &Arc<ControlPlane>,
    model: &str,
    req: ReferenceRequest,
    who: &str,
) -> Result<Value, ControlError> {
    let p = plane.published();
    let m = p.effective.models.get(model).ok_or_else(|| ControlError::not_found(format!("unknown model '{model}'")))?;
    let Some(drift) = &m.drift else {
        return Err(ControlError::conflict(format!(
            "model '{model}' has no drift monitoring (set models.{model}.monitoring.drift)"
        )));
    };
    let min_rows = drift.min_samples as u64;
    match (req.capture, req.reset) {
        (Some(_), true) => Err(ControlError::bad_request("send either capture or reset, not both")),
        (None, false) => Err(ControlError::bad_request(
            "send {\"capture\": {\"samples\": N}} or {\"capture\": {\"duration\": \"10m\"}}, or {\"reset\": true}",
        )),
        (None, true) => {
            let Some(old) = p.references.get(model).cloned() else {
                return Err(ControlError::conflict(format!(
                    "model '{model}' has no captured reference; it uses its config file's"
                )));
            };
            let g =
                plane.set_reference(model, None, "drift reference reset", &format!("reference reset by {who}")).await?;
            if let Err(e) = std::fs::remove_file(&old.path) {
                tracing::warn!(path = %old.path.display(), error = %e, "could not remove the captured reference");
            }
            Ok(json!({ "model": model, "generation": g, "reference": reference_json(plane, model) }))
        }
        (Some(c), false) => {
            if let Some(n) = c.samples.filter(|n| !(1..=MAX_CAPTURE_SAMPLES).contains(n)) {
                return Err(ControlError::bad_request(format!(
                    "capture.samples must be between 1 and {MAX_CAPTURE_SAMPLES}, got {n}"
                )));
            }
            let duration = match &c.duration {
                None => None,
                Some(d) => match switchyard_config::parse_duration(d) {
                    Ok(d) if !d.is_zero() && d <= MAX_CAPTURE_DURATION => Some(d),
                    Ok(_) => return Err(ControlError::bad_request("capture.duration must be above 0 and at most 24h")),
                    Err(e) => return Err(ControlError::bad_request(format!("capture.duration: {e}"))),
                },
            };
            if c.samples.is_none() && duration.is_none() {
                return Err(ControlError::bad_request(
                    "capture needs samples (rows) or duration (\"10m\"), or both (whichever ends first)",
                ));
            }
            if let Some(v) = c.variants.iter().flatten().find(|v| !m.variants.iter().any(|x| x.name.as_ref() == *v)) {
                return Err(ControlError::bad_request(format!(
                    "capture.variants: model '{model}' has no variant '{v}'"
                )));
            }
            if plane.captures().get(model).is_some_and(|s| s.running()) {
                return Err(ControlError::conflict(format!(
                    "a reference capture of model '{model}' is already running"
                )));
            }
            let window = match (c.samples, &c.duration) {
                (Some(n), Some(d)) => format!("{n} samples or {d}"),
                (Some(n), None) => format!("{n} samples"),
                (None, Some(d)) => d.clone(),
                (None, None) => unreachable!("checked above"),
            };
            let spec = CaptureSpec { variants: c.variants.clone(), samples: c.samples, duration };
            let ticket = plane.serving().capture_reference(model, spec).map_err(ControlError::conflict)?;
            let status = CaptureStatus::started(window.clone(), c.variants.clone(), ticket.rows.clone());
            plane.captures().insert(model, status);
            let (plane2, model2, who2) = (plane.clone(), model.to_string(), who.to_string());
            supervise::spawn(CAPTURE_TASK, async move {
                let what = format!("drift reference capture of model {model2} ({window})");
                let outcome = match ticket.result.await {
                    Err(e) => Err(e),
                    Ok((_, rows)) if rows < min_rows => Err(format!(
                        "the window held {rows} sampled rows; a reference needs at least {min_rows} (the model's monitoring.drift.min_samples)"
                    )),
                    Ok((profile, rows)) => {
                        let path = reference_path(plane2.state_path(), &model2);
                        match write_file(&path, &(profile + "\n")) {
                            Err(e) => Err(e),
                            Ok(()) => {
                                let r = CapturedReference {
                                    path,
                                    captured_at: now_secs(),
                                    rows,
                                    variants: c.variants,
                                    window,
                                };
                                plane2
                                    .set_reference(&model2, Some(r), "drift reference captured", &format!("capture by {who2}"))
                                    .await
                                    .map_err(|e| e.message)
                            }
                        }
                    }
                };
                match &outcome {
                    Ok(g) => {
                        tracing::info!(target: "audit", who = who2, what, generation = g, "drift reference captured")
                    }
                    Err(e) => {
                        tracing::warn!(target: "audit", who = who2, what, error = %e, "drift reference capture failed")
                    }
                }
                audit(&who2, &what, outcome.as_ref().map(|g| *g).map_err(String::as_str));
                plane2.captures().update(&model2, |s| s.finish(outcome));
            });
            Ok(json!({
                "model": model,
                "generation": p.generation,
                "capture": plane.captures().get(model).map(|s| s.to_json()),
            }))
        }
    }
}
