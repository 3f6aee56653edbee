//! The effective config: the file config with the API's weight overrides on
//! top. A pure function — no I/O, no clock — so the precedence rules
//! (docs/operations.md, "How the file and the API combine") are testable
//! alone:
//!
//! - the file is the base; an override sets the weight of the variants it
//!   names, whatever the file says for them (API wins over file weights);
//! - variants an override does not name keep the file's weight;
//! - an override naming a model or variant the file no longer has is dropped
//!   whole (that model's file weights apply), and so is one that would leave
//!   the model no traffic; each drop is reported.

use std::collections::BTreeMap;

use switchyard_config::ValidatedConfig;

use crate::source::Source;
use crate::state::ModelOverride;

/// The config the serving plane runs, and where its weights came from.
#[derive(Debug, Clone)]
pub struct Effective {
    pub config: ValidatedConfig,
    /// Per model, per overridden variant: who set its weight (absent = the file).
    pub sources: BTreeMap<String, BTreeMap<String, Source>>,
    /// The overrides that still apply.
    pub overrides: BTreeMap<String, ModelOverride>,
    /// One line per dropped override, for the audit log.
    pub dropped: Vec<String>,
}

/// Applies `overrides` to `file`.
pub fn effective(file: &ValidatedConfig, overrides: &BTreeMap<String, ModelOverride>) -> Effective {
    let mut config = file.clone();
    let mut sources = BTreeMap::new();
    let mut kept = BTreeMap::new();
    let mut dropped = Vec::new();
    for (model, o) in overrides {
        let Some(m) = config.models.get_mut(model.as_str()) else {
            dropped.push(format!("model `{model}` is no longer configured: its API weights were dropped"));
            continue;
        };
        if let Some(v) = o.weights.keys().find(|v| !m.variants.iter().any(|x| x.name.as_ref() == v.as_str())) {
            dropped.push(format!(
                "model `{model}` no longer has variant `{v}`: its API weights were dropped, file weights apply"
            ));
            continue;
        }
        let sum: f64 = m.variants.iter().map(|v| o.weights.get(v.name.as_ref()).copied().unwrap_or(v.weight)).sum();
        if sum <= 0.0 {
            dropped
                .push(format!("model `{model}`: API weights would leave no traffic with the file's variants; dropped"));
            continue;
        }
        let mut src = BTreeMap::new();
        for var in &mut m.variants {
            if let Some(w) = o.weights.get(var.name.as_ref()) {
                var.weight = *w;
                src.insert(var.name.to_string(), o.source.clone());
            }
        }
        sources.insert(model.clone(), src);
        kept.insert(model.clone(), o.clone());
    }
    Effective { config, sources, overrides: kept, dropped }
}

/// The variant weights of `model` in `cfg` (empty for an unknown model).
pub fn weights_of(cfg: &ValidatedConfig, model: &str) -> BTreeMap<String, f64> {
    cfg.models
        .get(model)
        .map(|m| m.variants.iter().map(|v| (v.name.to_string(), v.weight)).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Model `m` (v1 90, v2 10, v3 0) and model `n` (a 100).
    fn file(w: [f64; 3]) -> ValidatedConfig {
        let yaml = format!(
            "listeners:\n  http:\n    address: 127.0.0.1:1\n  grpc:\n    enabled: false\nbackends:\n  b: {{kind: v2-http, endpoints: [\"http://127.0.0.1:2\"]}}\nmodels:\n  m:\n    variants:\n      - {{name: v1, backend: b, weight: {}}}\n      - {{name: v2, backend: b, weight: {}}}\n      - {{name: v3, backend: b, weight: {}}}\n  n:\n    variants:\n      - {{name: a, backend: b, weight: 100}}\n",
            w[0], w[1], w[2]
        );
        ValidatedConfig::parse(&yaml, Path::new(".")).expect("valid test config")
    }

    fn o(pairs: &[(&str, f64)], source: Source) -> ModelOverride {
        ModelOverride { weights: pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect(), source }
    }

    fn w(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn without_overrides_the_file_is_the_effective_config() {
        let f = file([90.0, 10.0, 0.0]);
        let e = effective(&f, &BTreeMap::new());
        assert_eq!(e.config, f);
        assert!(e.sources.is_empty() && e.overrides.is_empty() && e.dropped.is_empty());
    }

    #[test]
    fn precedence_of_file_and_api_weights() {
        struct Case {
            what: &'static str,
            file: [f64; 3],
            overrides: Vec<(&'static str, ModelOverride)>,
            weights: BTreeMap<String, f64>,
            sources: Vec<(&'static str, &'static str)>,
            kept: usize,
            dropped: &'static str,
        }
        let cases = [
            Case {
                what: "an override wins over the file's weight for the variants it names",
                file: [90.0, 10.0, 0.0],
                overrides: vec![("m", o(&[("v1", 50.0), ("v2", 50.0)], Source::Api))],
                weights: w(&[("v1", 50.0), ("v2", 50.0), ("v3", 0.0)]),
                sources: vec![("v1", "api"), ("v2", "api")],
                kept: 1,
                dropped: "",
            },
            Case {
                what: "the file changed the overridden variant's weight: the override still wins",
                file: [10.0, 90.0, 0.0],
                overrides: vec![("m", o(&[("v1", 50.0), ("v2", 50.0)], Source::Api))],
                weights: w(&[("v1", 50.0), ("v2", 50.0), ("v3", 0.0)]),
                sources: vec![("v1", "api"), ("v2", "api")],
                kept: 1,
                dropped: "",
            },
            Case {
                what: "variants not named keep the file's weight",
                file: [90.0, 10.0, 5.0],
                overrides: vec![("m", o(&[("v3", 20.0)], Source::Experiment { test_id: "t".into() }))],
                weights: w(&[("v1", 90.0), ("v2", 10.0), ("v3", 20.0)]),
                sources: vec![("v3", "experiment")],
                kept: 1,
                dropped: "",
            },
            Case {
                what: "an override naming a variant the file no longer has is dropped whole",
                file: [90.0, 10.0, 0.0],
                overrides: vec![("m", o(&[("v1", 0.0), ("gone", 100.0)], Source::Api))],
                weights: w(&[("v1", 90.0), ("v2", 10.0), ("v3", 0.0)]),
                sources: vec![],
                kept: 0,
                dropped: "no longer has variant `gone`",
            },
            Case {
                what: "an override of a model the file no longer has is dropped",
                file: [90.0, 10.0, 0.0],
                overrides: vec![("gone", o(&[("v1", 1.0)], Source::Api))],
                weights: w(&[("v1", 90.0), ("v2", 10.0), ("v3", 0.0)]),
                sources: vec![],
                kept: 0,
                dropped: "model `gone` is no longer configured",
            },
            Case {
                what: "an override that would leave no traffic with the file's weights is dropped",
                file: [0.0, 10.0, 0.0],
                overrides: vec![("m", o(&[("v2", 0.0)], Source::Rollout))],
                weights: w(&[("v1", 0.0), ("v2", 10.0), ("v3", 0.0)]),
                sources: vec![],
                kept: 0,
                dropped: "would leave no traffic",
            },
        ];
        for c in cases {
            let overrides: BTreeMap<String, ModelOverride> =
                c.overrides.into_iter().map(|(m, o)| (m.to_string(), o)).collect();
            let e = effective(&file(c.file), &overrides);
            assert_eq!(weights_of(&e.config, "m"), c.weights, "{}", c.what);
            assert_eq!(weights_of(&e.config, "n"), w(&[("a", 100.0)]), "{}: other models untouched", c.what);
            let sources: BTreeMap<String, String> = e
                .sources
                .get("m")
                .map(|s| s.iter().map(|(k, v)| (k.clone(), v.label().to_string())).collect())
                .unwrap_or_default();
            let want: BTreeMap<String, String> =
                c.sources.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            assert_eq!(sources, want, "{}", c.what);
            assert_eq!(e.overrides.len(), c.kept, "{}", c.what);
            if c.dropped.is_empty() {
                assert!(e.dropped.is_empty(), "{}: {:?}", c.what, e.dropped);
            } else {
                assert!(e.dropped.len() == 1 && e.dropped[0].contains(c.dropped), "{}: {:?}", c.what, e.dropped);
            }
        }
    }

    #[test]
    fn effective_is_pure() {
        let f = file([90.0, 10.0, 0.0]);
        let overrides: BTreeMap<String, ModelOverride> = [("m".to_string(), o(&[("v2", 100.0)], Source::Api))].into();
        let (a, b) = (effective(&f, &overrides), effective(&f, &overrides));
        assert_eq!(a.config, b.config);
        assert_eq!(weights_of(&f, "m"), w(&[("v1", 90.0), ("v2", 10.0), ("v3", 0.0)]), "the file is not touched");
    }
}
