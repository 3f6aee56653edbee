//! The `models` section: routes, their variants (references to backends,
//! weights, shadows, cache opt-in), dynamic batching, canary rollouts, and
//! their content-routing rules (`rules`).

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use serde_saphyr::{Location, Spanned};

use super::cache::cache_policy;
use super::fields::{duration, header_name, loc, positive, Errors};
use crate::raw::*;
use crate::validated::*;

/// What models refer to outside their own section.
pub(super) struct Context<'a> {
    pub(super) backends: &'a BTreeMap<Arc<str>, BackendConfig>,
    pub(super) cache: &'a CacheConfig,
    /// `routing.sticky_header`, inherited by models that set none.
    pub(super) default_sticky: Option<String>,
    /// The config file's directory: reference profiles are relative to it.
    pub(super) base_dir: &'a std::path::Path,
    /// The graphs' names: a content-routing rule may send requests to one.
    pub(super) graphs: &'a BTreeSet<String>,
}

pub(super) fn models(
    errs: &mut Errors,
    raw: BTreeMap<String, Spanned<RawModel>>,
    cx: &Context<'_>,
) -> BTreeMap<Arc<str>, ModelConfig> {
    let mut models = BTreeMap::new();
    let targets = super::rules::Targets { models: &raw, graphs: cx.graphs };
    for (name, m) in &raw {
        let path = format!("models.{name}");
        if name.is_empty() {
            errs.at(&path, loc(m), "model name must not be empty");
            continue;
        }
        let mut model = model(errs, &path, name, &m.value, cx);
        model.rules = super::rules::rules(errs, &path, name, &m.value, &targets);
        models.insert(Arc::<str>::from(name.as_str()), model);
    }
    models
}

fn model(errs: &mut Errors, path: &str, name: &str, m: &RawModel, cx: &Context<'_>) -> ModelConfig {
    let sticky_header = m
        .sticky_header
        .as_ref()
        .and_then(|s| header_name(errs, &format!("{path}.sticky_header"), s))
        .or_else(|| cx.default_sticky.clone());
    let vs = &m.variants;
    if vs.value.is_empty() {
        errs.at(format!("{path}.variants"), loc(vs), "a model needs at least one variant");
    }
    let model_cache =
        m.cache.as_ref().map(|c| cache_policy(errs, &format!("{path}.cache"), c, cx.cache.redis.is_some()));
    let mut seen = BTreeSet::new();
    let mut variants = Vec::with_capacity(vs.value.len());
    for (i, v) in vs.value.iter().enumerate() {
        let vp = format!("{path}.variants[{i}]");
        let name_of = &v.value.name;
        if name_of.value.is_empty() {
            errs.at(format!("{vp}.name"), loc(name_of), "variant name must not be empty");
        } else if !seen.insert(name_of.value.clone()) {
            errs.at(
                format!("{vp}.name"),
                loc(name_of),
                format!("duplicate variant name `{}` in model `{name}`", name_of.value),
            );
        }
        variants.push(variant(errs, &vp, v, model_cache.as_ref(), cx));
    }
    // A TF Serving label names one variant: its own name or a label it declares.
    let mut labels: BTreeMap<&str, &str> = BTreeMap::new();
    for (i, v) in vs.value.iter().enumerate() {
        for l in &v.value.labels {
            let (lp, label) = (format!("{path}.variants[{i}].labels"), l.value.as_str());
            if label.is_empty() || label.contains('/') {
                errs.at(lp, loc(l), format!("label `{label}` must be a non-empty name without `/`"));
            } else if vs.value.iter().any(|o| o.value.name.value == label && o.value.name.value != v.value.name.value) {
                errs.at(lp, loc(l), format!("label `{label}` is another variant's name in model `{name}`"));
            } else if let Some(other) = labels.insert(label, v.value.name.value.as_str()) {
                errs.at(lp, loc(l), format!("label `{label}` is already variant `{other}`'s in model `{name}`"));
            }
        }
    }
    // Invalid weights were reported and count as 0 here.
    let sum: f64 = variants.iter().map(|v| v.weight).filter(|w| w.is_finite() && *w >= 0.0).sum();
    if !vs.value.is_empty() && sum <= 0.0 {
        errs.at(format!("{path}.variants"), loc(vs), "variant weights must have a positive sum");
    }
    let rollout = m.rollout.as_ref().map(|r| rollout(errs, &format!("{path}.rollout"), r, &variants));
    if let Some(r) = m.rollout.as_ref() {
        let needs = |field: &Option<Spanned<f64>>, section: &str, present: bool, errs: &mut Errors| {
            if let (Some(f), false) = (field, present) {
                errs.at(
                    format!("{path}.rollout"),
                    loc(f),
                    format!("judging the canary on it needs {path}.monitoring.{section}"),
                );
            }
        };
        let mon = m.monitoring.as_ref().map(|x| &x.value);
        needs(&r.value.max_drift, "drift", mon.is_some_and(|x| x.drift.is_some()), errs);
        needs(&r.value.max_accuracy_drop, "quality", mon.is_some_and(|x| x.quality.is_some()), errs);
    }
    let drift = m
        .monitoring
        .as_ref()
        .and_then(|mon| mon.value.drift.as_ref())
        .map(|d| super::monitoring::drift(errs, &format!("{path}.monitoring.drift"), d, cx.base_dir));
    let quality = m
        .monitoring
        .as_ref()
        .and_then(|mon| mon.value.quality.as_ref())
        .map(|q| super::monitoring::quality(errs, &format!("{path}.monitoring.quality"), q));
    let sequences = m.sequences.as_ref().map_or_else(SequenceConfig::default, |s| {
        let p = format!("{path}.sequences");
        SequenceConfig {
            idle_timeout: duration(
                errs,
                &format!("{p}.idle_timeout"),
                &s.value.idle_timeout,
                DEFAULT_SEQUENCE_IDLE_TIMEOUT,
                false,
            ),
            max_active: positive(errs, &format!("{p}.max_active"), &s.value.max_active, DEFAULT_MAX_SEQUENCES),
        }
    });
    ModelConfig {
        name: Arc::from(name),
        sticky_header,
        variants,
        rollout,
        drift,
        quality,
        sequences,
        rules: Vec::new(),
    }
}

fn variant(
    errs: &mut Errors,
    vp: &str,
    spanned: &Spanned<RawVariant>,
    model_cache: Option<&CachePolicy>,
    cx: &Context<'_>,
) -> VariantConfig {
    let v = &spanned.value;
    if !cx.backends.contains_key(v.backend.value.as_str()) {
        let known: Vec<&str> = cx.backends.keys().map(|k: &Arc<str>| k.as_ref()).collect();
        let known = if known.is_empty() {
            "no backends are defined".to_string()
        } else {
            format!("defined: {}", known.join(", "))
        };
        errs.at(format!("{vp}.backend"), loc(&v.backend), format!("unknown backend `{}` ({known})", v.backend.value));
    }
    let w = v.weight.value;
    if !w.is_finite() || w < 0.0 {
        errs.at(format!("{vp}.weight"), loc(&v.weight), format!("weight must be a non-negative number, got {w}"));
    }
    let shadow_percent = v.shadow_percent.as_ref().map(|p| {
        if !(p.value > 0.0 && p.value <= 100.0) {
            errs.at(format!("{vp}.shadow_percent"), loc(p), format!("must be in (0, 100], got {}", p.value));
        }
        if w > 0.0 {
            // An omitted weight has no place in the file: point at the variant.
            let (at, hint) = if *loc(&v.weight) == Location::UNKNOWN {
                (loc(spanned), " (it defaults to 1: set `weight: 0`)")
            } else {
                (loc(&v.weight), "")
            };
            errs.at(
                format!("{vp}.weight"),
                at,
                format!("a shadow variant gets mirrored copies only: its weight must be 0{hint}"),
            );
        }
        p.value
    });
    let cache = match (&v.cache, v.deterministic) {
        (Some(c), Some(false)) => {
            errs.at(
                format!("{vp}.cache"),
                loc(c),
                "a variant marked `deterministic: false` is never cached; remove `cache` or the mark",
            );
            None
        }
        (Some(c), _) => Some(cache_policy(errs, &format!("{vp}.cache"), c, cx.cache.redis.is_some())),
        (None, Some(false)) => None,
        (None, _) => model_cache.cloned(),
    };
    VariantConfig {
        name: Arc::from(v.name.value.as_str()),
        backend: Arc::from(v.backend.value.as_str()),
        model: v.model.as_ref().map(|m| Arc::from(m.value.as_str())),
        version: v.version.as_ref().map(|s| Arc::from(serde_saphyr_scalar_string(&s.value).as_str())),
        weight: w,
        batching: v.batching.as_ref().map(|b| batching(errs, &format!("{vp}.batching"), b)),
        shadow_percent,
        cache,
        deterministic: v.deterministic.unwrap_or(true),
        labels: v.labels.iter().map(|l| Arc::from(l.value.as_str())).collect(),
        features: v.features.as_ref().and_then(|f| super::sources::features(errs, &format!("{vp}.features"), f)),
        torchserve: v.torchserve.as_ref().map(|t| {
            // A TorchServe behind takes the bodies as they came: there is nothing to translate to.
            if let Some(b) = cx.backends.get(v.backend.value.as_str()).filter(|b| b.kind() == "torchserve") {
                errs.at(
                    format!("{vp}.torchserve"),
                    loc(t),
                    format!(
                        "backend `{}` is kind {}: TorchServe bodies reach it unchanged; a translation is for tensor \
                         backends (remove `torchserve`)",
                        v.backend.value,
                        b.kind()
                    ),
                );
            }
            super::torchserve::translation(errs, &format!("{vp}.torchserve"), t)
        }),
    }
}

/// The baseline and canary must be variants of this model.
fn rollout(errs: &mut Errors, path: &str, r: &Spanned<RawRollout>, variants: &[VariantConfig]) -> RolloutConfig {
    let v = &r.value;
    for (field, name) in [("baseline", &v.baseline), ("canary", &v.canary)] {
        if !variants.iter().any(|x| x.name.as_ref() == name.value) {
            errs.at(format!("{path}.{field}"), loc(name), format!("no variant named `{}` in this model", name.value));
        }
    }
    if v.baseline.value == v.canary.value {
        errs.at(format!("{path}.canary"), loc(&v.canary), "canary and baseline must be different variants");
    }
    let steps = v.steps.value.clone();
    let ascending = steps.windows(2).all(|w| w[0] < w[1]);
    if steps.is_empty() || !ascending || steps.iter().any(|s| !(*s > 0.0 && *s <= 100.0)) {
        errs.at(
            format!("{path}.steps"),
            loc(&v.steps),
            "steps must be ascending canary weights in (0, 100], e.g. [5, 25, 50, 100]",
        );
    }
    let ratio = |errs: &mut Errors, f: &str, x: &Option<Spanned<f64>>, d: f64, min: f64| match x {
        None => d,
        Some(s) if s.value.is_finite() && s.value >= min => s.value,
        Some(s) => {
            errs.at(format!("{path}.{f}"), loc(s), format!("must be a number ≥ {min}, got {}", s.value));
            d
        }
    };
    RolloutConfig {
        baseline: Arc::from(v.baseline.value.as_str()),
        canary: Arc::from(v.canary.value.as_str()),
        steps,
        interval: duration(errs, &format!("{path}.interval"), &v.interval, DEFAULT_ROLLOUT_INTERVAL, false),
        max_error_rate_increase: ratio(
            errs,
            "max_error_rate_increase",
            &v.max_error_rate_increase,
            DEFAULT_MAX_ERROR_RATE_INCREASE,
            0.0,
        ),
        max_p99_ratio: ratio(errs, "max_p99_ratio", &v.max_p99_ratio, DEFAULT_MAX_P99_RATIO, 1.0),
        min_requests: v.min_requests.as_ref().map(|m| m.value).unwrap_or(DEFAULT_MIN_REQUESTS),
        max_drift: v.max_drift.as_ref().map(|d| ratio(errs, "max_drift", &Some(d.clone()), 0.0, 0.0)),
        max_accuracy_drop: v.max_accuracy_drop.as_ref().map(|d| {
            let x = ratio(errs, "max_accuracy_drop", &Some(d.clone()), 0.0, 0.0);
            if x > 1.0 {
                errs.at(
                    format!("{path}.max_accuracy_drop"),
                    loc(d),
                    "must be at most 1 (an absolute accuracy difference)",
                );
            }
            x
        }),
    }
}

fn batching(errs: &mut Errors, path: &str, b: &Spanned<RawBatching>) -> BatchingConfig {
    let r = &b.value;
    let max_batch_size = match NonZeroUsize::new(r.max_batch_size.value as usize) {
        Some(n) => n,
        None => {
            errs.at(format!("{path}.max_batch_size"), loc(&r.max_batch_size), "must be at least 1");
            NonZeroUsize::MIN
        }
    };
    let mut preferred: Vec<usize> = r.preferred_batch_sizes.iter().map(|n| *n as usize).collect();
    preferred.sort_unstable();
    preferred.dedup();
    if let Some(bad) = preferred.iter().find(|p| **p == 0 || **p > max_batch_size.get()) {
        errs.at(
            format!("{path}.preferred_batch_sizes"),
            loc(b),
            format!("preferred batch size {bad} must be between 1 and max_batch_size ({max_batch_size})"),
        );
    }
    let priority_levels = positive(errs, &format!("{path}.priority_levels"), &r.priority_levels, 1);
    let default_priority = match &r.default_priority {
        None => 1,
        Some(p) if p.value == 0 || p.value as usize > priority_levels.get() => {
            errs.at(
                format!("{path}.default_priority"),
                loc(p),
                format!("must be between 1 and priority_levels ({priority_levels})"),
            );
            1
        }
        Some(p) => p.value as usize,
    };
    BatchingConfig {
        max_batch_size,
        max_queue_delay: duration(
            errs,
            &format!("{path}.max_queue_delay"),
            &r.max_queue_delay,
            DEFAULT_MAX_QUEUE_DELAY,
            true,
        ),
        preferred_batch_sizes: preferred,
        max_queue_size: positive(errs, &format!("{path}.max_queue_size"), &r.max_queue_size, DEFAULT_MAX_QUEUE_SIZE)
            .get(),
        default_timeout: r
            .default_timeout
            .as_ref()
            .map(|_| duration(errs, &format!("{path}.default_timeout"), &r.default_timeout, Duration::ZERO, false)),
        priority_levels,
        default_priority,
        adaptive: r.adaptive.unwrap_or(false),
        max_concurrent_batches: positive(
            errs,
            &format!("{path}.max_concurrent_batches"),
            &r.max_concurrent_batches,
            DEFAULT_MAX_CONCURRENT_BATCHES,
        ),
    }
}

fn serde_saphyr_scalar_string(s: &serde_saphyr_scalar::Scalar) -> String {
    match s {
        serde_saphyr_scalar::Scalar::Int(n) => n.to_string(),
        serde_saphyr_scalar::Scalar::Str(s) => s.clone(),
    }
}
