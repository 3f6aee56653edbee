//! A model's `monitoring` section: drift detection against a reference
//! profile, and prediction quality from feedback; and the top-level
//! `tracing` section (span export). The profile file must exist; its content is read when the
//! routing snapshot is built (a bad profile refuses the generation there).

use std::num::NonZeroUsize;
use std::path::Path;

use serde_saphyr::Spanned;

use super::fields::{duration, loc, Errors};
use crate::raw::{RawDrift, RawQuality, RawTracing};
use crate::validated::*;

pub(super) fn drift(errs: &mut Errors, path: &str, d: &Spanned<RawDrift>, base_dir: &Path) -> DriftConfig {
    let v = &d.value;
    let reference = base_dir.join(&v.reference.value);
    if v.reference.value.is_empty() {
        errs.at(format!("{path}.reference"), loc(&v.reference), "reference must name a profile file");
    } else if !reference.is_file() {
        errs.at(
            format!("{path}.reference"),
            loc(&v.reference),
            format!("no profile file at {} (make one with `switchyard profile`)", reference.display()),
        );
    }
    let sample_rate = match &v.sample_rate {
        None => DEFAULT_DRIFT_SAMPLE_RATE,
        Some(s) if s.value > 0.0 && s.value <= 1.0 => s.value,
        Some(s) => {
            errs.at(format!("{path}.sample_rate"), loc(s), format!("must be in (0, 1], got {}", s.value));
            DEFAULT_DRIFT_SAMPLE_RATE
        }
    };
    let window = match &v.window {
        None => NonZeroUsize::new(DEFAULT_DRIFT_WINDOW).expect("non-zero"),
        Some(s) if (4..=1_000_000).contains(&s.value) => NonZeroUsize::new(s.value as usize).expect("≥ 4"),
        Some(s) => {
            errs.at(format!("{path}.window"), loc(s), format!("must be between 4 and 1000000 rows, got {}", s.value));
            NonZeroUsize::new(DEFAULT_DRIFT_WINDOW).expect("non-zero")
        }
    };
    let min_samples = match &v.min_samples {
        None => DEFAULT_DRIFT_MIN_SAMPLES.min(window.get()),
        Some(s) if s.value >= 1 && s.value as usize <= window.get() => s.value as usize,
        Some(s) => {
            errs.at(
                format!("{path}.min_samples"),
                loc(s),
                format!("must be between 1 and the window ({}), got {}", window, s.value),
            );
            1
        }
    };
    let threshold = match &v.threshold {
        None => DEFAULT_DRIFT_THRESHOLD,
        Some(s) if s.value.is_finite() && s.value > 0.0 => s.value,
        Some(s) => {
            errs.at(format!("{path}.threshold"), loc(s), format!("must be a PSI above 0, got {}", s.value));
            DEFAULT_DRIFT_THRESHOLD
        }
    };
    DriftConfig { reference, sample_rate, window, min_samples, threshold }
}

fn count(errs: &mut Errors, path: &str, v: &Option<Spanned<u64>>, default: usize, max: u64) -> NonZeroUsize {
    let d = NonZeroUsize::new(default).expect("non-zero default");
    match v {
        None => d,
        Some(s) if s.value >= 1 && s.value <= max => NonZeroUsize::new(s.value as usize).expect("≥ 1"),
        Some(s) => {
            errs.at(path, loc(s), format!("must be between 1 and {max}, got {}", s.value));
            d
        }
    }
}

pub(super) fn quality(errs: &mut Errors, path: &str, q: &Spanned<RawQuality>) -> QualityConfig {
    let v = &q.value;
    let task = match v.task.value.as_str() {
        "classification" => QualityTask::Classification,
        "regression" => QualityTask::Regression,
        other => {
            errs.at(
                format!("{path}.task"),
                loc(&v.task),
                format!("unknown task `{other}` (use classification or regression)"),
            );
            QualityTask::Classification
        }
    };
    if v.output.value.is_empty() {
        errs.at(
            format!("{path}.output"),
            loc(&v.output),
            "output must name the output tensor predictions are read from",
        );
    }
    QualityConfig {
        task,
        output: v.output.value.as_str().into(),
        window: count(errs, &format!("{path}.window"), &v.window, DEFAULT_QUALITY_WINDOW, 1_000_000),
        store: count(errs, &format!("{path}.store"), &v.store, DEFAULT_QUALITY_STORE, 10_000_000),
        ttl: duration(errs, &format!("{path}.ttl"), &v.ttl, DEFAULT_QUALITY_TTL, false),
    }
}

pub(super) fn tracing(errs: &mut Errors, path: &str, t: &Spanned<RawTracing>) -> TracingConfig {
    let v = &t.value;
    let ep = &v.otlp_endpoint;
    match ep.value.parse::<http::Uri>() {
        Ok(u) if u.scheme_str() == Some("http") && u.authority().is_some() && u.path() == "/" => {}
        _ => errs.at(
            format!("{path}.otlp_endpoint"),
            loc(ep),
            format!("`{}` is not an OTLP/gRPC endpoint like http://127.0.0.1:4317", ep.value),
        ),
    }
    let sampling_ratio = match &v.sampling_ratio {
        None => DEFAULT_TRACE_SAMPLING_RATIO,
        Some(s) if (0.0..=1.0).contains(&s.value) => s.value,
        Some(s) => {
            errs.at(format!("{path}.sampling_ratio"), loc(s), format!("must be in [0, 1], got {}", s.value));
            DEFAULT_TRACE_SAMPLING_RATIO
        }
    };
    let service_name = v.service_name.as_ref().map_or(DEFAULT_TRACE_SERVICE_NAME.to_string(), |s| s.value.clone());
    TracingConfig {
        otlp_endpoint: ep.value.trim_end_matches('/').to_string(),
        sampling_ratio,
        parent_based: v.parent_based.unwrap_or(true),
        service_name,
        max_queue: count(errs, &format!("{path}.max_queue"), &v.max_queue, DEFAULT_TRACE_MAX_QUEUE, 1_000_000),
        max_batch: count(errs, &format!("{path}.max_batch"), &v.max_batch, DEFAULT_TRACE_MAX_BATCH, 100_000),
        export_interval: duration(
            errs,
            &format!("{path}.export_interval"),
            &v.export_interval,
            DEFAULT_TRACE_EXPORT_INTERVAL,
            false,
        ),
    }
}
