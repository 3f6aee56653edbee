//! Model monitoring as the control API shows it: `GET /ml/models/{m}/drift`,
//! each variant's latest drift report (per-feature PSI and KS, the overall
//! data and prediction drift, the threshold and whether it is crossed), and
//! each variant's prediction quality as `GET /ml/models/{m}/metrics` shows it.

use serde_json::{json, Value};
use switchyard_stats::drift::{DriftReport, FeatureScore};
use switchyard_stats::quality::QualityReport;

use crate::error::ControlError;
use crate::plane::ControlPlane;

fn feature_json(f: &FeatureScore) -> Value {
    json!({ "feature": f.name, "psi": f.psi, "ks": f.ks, "ks_upper": f.ks_upper })
}

/// Features sorted by PSI, worst first: the first one is the one to look at.
fn features_json(scores: &[FeatureScore]) -> Vec<Value> {
    let mut s: Vec<&FeatureScore> = scores.iter().collect();
    s.sort_by(|a, b| b.psi.total_cmp(&a.psi));
    s.into_iter().map(feature_json).collect()
}

fn report_json(variant: &str, r: &DriftReport) -> Value {
    json!({
        "name": variant,
        "data_drift_score": r.data_drift,
        "model_drift_score": r.model_drift,
        "threshold": r.threshold,
        "drifted": r.drifted(),
        "window_rows": { "inputs": r.input_rows, "outputs": r.output_rows },
        "samples": { "summarised": r.sampled, "dropped": r.dropped },
        "inputs": features_json(&r.inputs),
        "outputs": features_json(&r.outputs),
    })
}

/// `GET /ml/models/{model}/drift`: 404 for an unknown model, 409 for one without drift monitoring.
pub(crate) fn drift(plane: &ControlPlane, model: &str) -> Result<Value, ControlError> {
    let p = plane.published();
    let m = p.effective.models.get(model).ok_or_else(|| ControlError::not_found(format!("unknown model '{model}'")))?;
    if m.drift.is_none() {
        return Err(ControlError::conflict(format!(
            "model '{model}' has no drift monitoring (set models.{model}.monitoring.drift)"
        )));
    }
    let variants: Vec<Value> = m
        .variants
        .iter()
        .map(|v| match plane.serving().drift(model, &v.name) {
            Some(r) => report_json(&v.name, &r),
            None => json!({ "name": v.name.as_ref(), "data_drift_score": null, "model_drift_score": null }),
        })
        .collect();
    let worst = |f: fn(&DriftReport) -> Option<f64>| {
        m.variants.iter().filter_map(|v| plane.serving().drift(model, &v.name).and_then(|r| f(&r))).reduce(f64::max)
    };
    Ok(json!({
        "model": model,
        "generation": p.generation,
        "data_drift_score": worst(|r| r.data_drift),
        "model_drift_score": worst(|r| r.model_drift),
        "reference": crate::reference::reference_json(plane, model),
        "variants": variants,
    }))
}

/// A variant's quality over its feedback window.
pub(crate) fn quality_json(q: &QualityReport) -> Value {
    let mut v = json!({ "labelled": q.count, "labelled_total": q.total });
    if let Some(c) = &q.classification {
        v["classification"] = json!({
            "accuracy": c.accuracy, "precision": c.precision, "recall": c.recall, "f1_score": c.f1,
            "averaging": if c.binary { "binary" } else { "macro" },
            "macro": { "precision": c.macro_precision, "recall": c.macro_recall, "f1_score": c.macro_f1 },
            "micro": { "precision": c.micro_f1, "recall": c.micro_f1, "f1_score": c.micro_f1 },
        });
    }
    if let Some(r) = &q.regression {
        v["regression"] = json!({ "mae": r.mae, "rmse": r.rmse });
    }
    v
}
