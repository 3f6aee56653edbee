//! Checks of model and input sources: an onnx backend's `repository:
//! mlflow://…` URL with its `mlflow` block, and a variant's `features` block.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;

use serde_saphyr::Spanned;

use super::fields::{duration, escaped, loc, positive, Errors};
use super::upstream::parse_http_or_bare;
use crate::raw::{RawFeatures, RawMlflowSource};
use crate::sources::*;

/// The URL scheme that makes an onnx backend's repository an MLflow registry model.
pub(super) const MLFLOW_SCHEME: &str = "mlflow://";

/// Parses `mlflow://HOST[:PORT]/MODEL[/VERSION|/STAGE|/latest|@ALIAS]` into
/// the REST base URL, the model name and the selector (as MLflow's own
/// `models:/` URIs write them).
pub(super) fn parse_mlflow_url(text: &str) -> Result<(String, String, MlflowSelector), String> {
    let shown = escaped(text);
    let rest = text.strip_prefix(MLFLOW_SCHEME).ok_or_else(|| format!("`{shown}` does not start with mlflow://"))?;
    let (authority, path) = rest.split_once('/').ok_or_else(|| {
        format!("`{shown}`: name the registered model, as mlflow://HOST[:PORT]/MODEL[@ALIAS|/VERSION|/STAGE]")
    })?;
    if authority.is_empty() {
        return Err(format!("`{shown}`: the tracking server's host is missing"));
    }
    let authority = if authority.contains(':') && !authority.ends_with(']') {
        authority.to_owned()
    } else {
        format!("{authority}:{DEFAULT_MLFLOW_PORT}")
    };
    // The http crate's own parser checks the authority: a stray character never reaches a request.
    let up = parse_http_or_bare(&authority).map_err(|e| format!("`{shown}`: {e}"))?;
    let base_url = format!("http://{}", up.authority);
    let (model, selector) = if let Some((m, alias)) = path.split_once('@') {
        if alias.is_empty() || alias.contains('/') {
            return Err(format!("`{shown}`: `@` must be followed by an alias name"));
        }
        (m, MlflowSelector::Alias(alias.to_owned()))
    } else if let Some((m, sel)) = path.split_once('/') {
        let selector = if sel.eq_ignore_ascii_case("latest") {
            MlflowSelector::Latest
        } else if let Ok(v) = sel.parse::<u64>() {
            if v == 0 {
                return Err(format!("`{shown}`: MLflow versions start at 1"));
            }
            MlflowSelector::Version(v)
        } else if let Some(stage) =
            ["None", "Staging", "Production", "Archived"].into_iter().find(|s| s.eq_ignore_ascii_case(sel))
        {
            MlflowSelector::Stage(stage.to_owned())
        } else {
            return Err(format!(
                "`{shown}`: `{}` is not a version number, a stage (Staging, Production, Archived, None) or `latest`",
                escaped(sel)
            ));
        };
        (m, selector)
    } else {
        (path, MlflowSelector::Latest)
    };
    // The name is also a directory of the local cache and the name clients use.
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if model.is_empty() || model.starts_with('.') || !model.chars().all(plain) {
        return Err(format!(
            "`{shown}`: the model name `{}` must be letters, digits, `-`, `_` or `.` (not leading)",
            escaped(model)
        ));
    }
    Ok((base_url, model.to_owned(), selector))
}

/// An onnx backend's MLflow source: its cache directory (the repository the
/// backend loads from) and the validated source. `None` after an error.
pub(super) fn mlflow(
    errs: &mut Errors,
    path: &str,
    backend: &str,
    repo: &Spanned<String>,
    raw: Option<&Spanned<RawMlflowSource>>,
    base_dir: &std::path::Path,
) -> Option<(PathBuf, MlflowSource)> {
    let (base_url, model, selector) = match parse_mlflow_url(&repo.value) {
        Ok(p) => p,
        Err(e) => {
            errs.at(format!("{path}.repository"), loc(repo), e);
            return None;
        }
    };
    let r = raw.map(|r| &r.value);
    let cache_dir = match r.and_then(|r| r.cache_dir.as_ref()) {
        Some(d) => base_dir.join(&d.value),
        // Per backend: two backends on one registry never share (or delete) each other's files.
        None => std::env::temp_dir().join("switchyard-mlflow").join(backend),
    };
    let none = None;
    let poll_interval = duration(
        errs,
        &format!("{path}.mlflow.poll_interval"),
        r.map_or(&none, |r| &r.poll_interval),
        DEFAULT_MLFLOW_POLL,
        false,
    );
    let timeout = duration(
        errs,
        &format!("{path}.mlflow.timeout"),
        r.map_or(&none, |r| &r.timeout),
        DEFAULT_MLFLOW_TIMEOUT,
        false,
    );
    Some((cache_dir, MlflowSource { base_url, model, selector, poll_interval, timeout }))
}

/// A variant's `features` block.
pub(super) fn features(errs: &mut Errors, path: &str, spanned: &Spanned<RawFeatures>) -> Option<FeaturesConfig> {
    let f = &spanned.value;
    let at = loc(spanned);
    let feast_url = match &f.feast {
        None => {
            errs.at(format!("{path}.feast"), at, "give the Feast feature server's URL, e.g. http://127.0.0.1:6566");
            None
        }
        Some(u) => match parse_http_or_bare(&u.value) {
            // The feature client speaks plain HTTP: refuse rather than send an https:// URL's traffic in clear.
            Ok(up) if up.tls => {
                errs.at(
                    format!("{path}.feast"),
                    loc(u),
                    format!("`{}`: TLS to the feature server is not supported yet; use http://", escaped(&u.value)),
                );
                None
            }
            Ok(up) => Some(format!("http://{}{}", up.authority, up.base_path.trim_end_matches('/'))),
            Err(e) => {
                errs.at(format!("{path}.feast"), loc(u), e);
                None
            }
        },
    };
    let keys = match (&f.entity_input, &f.entity_parameter) {
        (Some(i), None) => {
            Some(EntityKeys::Input { name: Arc::from(i.value.as_str()), keep: f.keep_entity_input.unwrap_or(false) })
        }
        (None, Some(p)) => {
            if f.keep_entity_input.is_some() {
                errs.at(format!("{path}.keep_entity_input"), at, "applies only to `entity_input`");
            }
            Some(EntityKeys::Parameter(Arc::from(p.value.as_str())))
        }
        _ => {
            errs.at(
                path,
                at,
                "give exactly one of `entity_input` (a tensor of keys) or `entity_parameter` (a request parameter)",
            );
            None
        }
    };
    if f.entity.value.is_empty() {
        errs.at(format!("{path}.entity"), loc(&f.entity), "name the entity's join key");
    }
    if f.features.is_empty() {
        errs.at(format!("{path}.features"), at, "list at least one `view:feature`");
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, r) in f.features.iter().enumerate() {
        let ok = r.value.split_once(':').is_some_and(|(v, n)| !v.is_empty() && !n.is_empty() && !n.contains(':'));
        if !ok {
            errs.at(
                format!("{path}.features[{i}]"),
                loc(r),
                format!("`{}` is not a feature reference (`view:feature`)", escaped(&r.value)),
            );
        } else if !seen.insert(r.value.as_str()) {
            errs.at(format!("{path}.features[{i}]"), loc(r), format!("`{}` is listed twice", r.value));
        }
    }
    if let EntityKeys::Input { name, .. } = keys.as_ref().unwrap_or(&EntityKeys::Parameter(Arc::from(""))) {
        if **name == *f.input.value {
            errs.at(format!("{path}.input"), loc(&f.input), "must differ from `entity_input`");
        }
    }
    let datatype = match f.datatype.as_ref().map(|d| d.value.as_str()) {
        None | Some("FP32") => FeatureDatatype::Fp32,
        Some("FP64") => FeatureDatatype::Fp64,
        Some("INT64") => FeatureDatatype::Int64,
        Some(other) => {
            errs.at(
                format!("{path}.datatype"),
                loc(f.datatype.as_ref().expect("matched Some")),
                format!("`{}` is not one of FP32, FP64, INT64", escaped(other)),
            );
            FeatureDatatype::Fp32
        }
    };
    if let Some(d) = &f.defaults {
        if d.value.len() != f.features.len() {
            errs.at(
                format!("{path}.defaults"),
                loc(d),
                format!("give one default per feature: {} features, {} defaults", f.features.len(), d.value.len()),
            );
        } else if let Some(bad) = d.value.iter().find(|v| !v.is_finite()) {
            errs.at(format!("{path}.defaults"), loc(d), format!("defaults must be finite numbers, got {bad}"));
        }
    }
    let timeout = duration(errs, &format!("{path}.timeout"), &f.timeout, DEFAULT_FEATURE_TIMEOUT, false);
    let cache_ttl = duration(errs, &format!("{path}.cache_ttl"), &f.cache_ttl, std::time::Duration::ZERO, true);
    let cache_max_entries =
        positive(errs, &format!("{path}.cache_max_entries"), &f.cache_max_entries, DEFAULT_FEATURE_CACHE_ENTRIES);
    Some(FeaturesConfig {
        feast_url: feast_url?,
        entity: Arc::from(f.entity.value.as_str()),
        keys: keys?,
        features: f.features.iter().map(|r| Arc::from(r.value.as_str())).collect(),
        input: Arc::from(f.input.value.as_str()),
        datatype,
        defaults: f.defaults.as_ref().map(|d| d.value.clone()),
        timeout,
        cache_ttl,
        cache_max_entries: NonZeroUsize::new(cache_max_entries.get()).expect("positive"),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::validated::{BackendConfig, VersionPolicy};

    fn errors(yaml: &str) -> Vec<String> {
        let e = super::super::parse(yaml, Path::new(".")).expect_err("config should be rejected");
        e.errors.into_iter().map(|f| format!("{}: {}", f.path, f.message)).collect()
    }

    const ONNX: &str = "backends:\n  b: {kind: onnx, repository: ";

    #[test]
    fn an_mlflow_repository_is_its_cache_and_serves_one_model() {
        let c = super::super::parse(
            "backends:\n  b:\n    kind: onnx\n    repository: mlflow://reg:8080/fraud@champion\n    mlflow: {cache_dir: /tmp/c, poll_interval: 5s}\n",
            Path::new("."),
        )
        .unwrap();
        let BackendConfig::Onnx(b) = &c.backends["b"] else { panic!() };
        assert_eq!(b.repository, Path::new("/tmp/c"));
        assert_eq!(b.models, vec!["fraud".to_owned()]);
        assert_eq!(b.version_policy, VersionPolicy::All);
        let m = b.mlflow.as_ref().unwrap();
        assert_eq!(
            (m.base_url.as_str(), m.poll_interval, m.timeout),
            ("http://reg:8080", Duration::from_secs(5), DEFAULT_MLFLOW_TIMEOUT)
        );
    }

    #[test]
    fn table_of_source_rejections() {
        let features = |extra: &str| {
            format!(
                "backends:\n  b: {{kind: v2-http, endpoints: ['http://h:1']}}\nmodels:\n  m:\n    variants:\n      - name: v\n        backend: b\n        features: {{entity: user_id, input: x, {extra}}}\n"
            )
        };
        let cases: Vec<(String, &str)> = vec![
            (
                format!("{ONNX}'mlflow://reg:1/m@'}}\n"),
                "backends.b.repository: `mlflow://reg:1/m@`: `@` must be followed",
            ),
            (
                format!("{ONNX}'mlflow://reg:1/m/2', version_policy: {{all: true}}}}\n"),
                "backends.b.version_policy: an MLflow repository",
            ),
            (
                format!("{ONNX}'mlflow://reg:1/m/2', models: [other]}}\n"),
                "backends.b.models: this backend serves only `m`",
            ),
            (
                format!("{ONNX}'mlflow://reg:1/m', mlflow: {{poll_interval: 0s}}}}\n"),
                "backends.b.mlflow.poll_interval: must be greater than zero",
            ),
            (format!("{ONNX}'.', mlflow: {{timeout: 1s}}}}\n"), "backends.b.mlflow: applies only when"),
            (features("feast: 'http://f:1', entity_input: k, features: [v:a]"), ""),
            (features("entity_input: k, features: [v:a]"), "variants[0].features.feast: give the Feast"),
            (features("feast: 'https://f:1', entity_input: k, features: [v:a]"), "features.feast: `https://f:1`: TLS"),
            (
                features("feast: 'http://f:1', features: [v:a]"),
                "variants[0].features: give exactly one of `entity_input`",
            ),
            (
                features("feast: 'http://f:1', entity_input: k, entity_parameter: p, features: [v:a]"),
                "give exactly one of",
            ),
            (
                features("feast: 'http://f:1', entity_parameter: p, keep_entity_input: true, features: [v:a]"),
                "keep_entity_input: applies only",
            ),
            (features("feast: 'http://f:1', entity_input: k, features: []"), "features.features: list at least one"),
            (
                features("feast: 'http://f:1', entity_input: k, features: [nocolon]"),
                "features.features[0]: `nocolon` is not a feature reference",
            ),
            (
                features("feast: 'http://f:1', entity_input: k, features: [v:a, v:a]"),
                "features.features[1]: `v:a` is listed twice",
            ),
            (
                features("feast: 'http://f:1', entity_input: x, features: [v:a]"),
                "features.input: must differ from `entity_input`",
            ),
            (
                features("feast: 'http://f:1', entity_input: k, features: [v:a], datatype: FP16"),
                "features.datatype: `FP16` is not one of",
            ),
            (
                features("feast: 'http://f:1', entity_input: k, features: [v:a, v:b], defaults: [1]"),
                "features.defaults: give one default per feature: 2 features, 1 defaults",
            ),
            (
                features("feast: 'http://f:1', entity_input: k, features: [v:a], timeout: 0s"),
                "features.timeout: must be greater than zero",
            ),
        ];
        for (yaml, want) in cases {
            if want.is_empty() {
                super::super::parse(&yaml, Path::new(".")).unwrap_or_else(|e| panic!("{yaml}: {e:?}"));
                continue;
            }
            let got = errors(&yaml);
            assert!(got.iter().any(|e| e.contains(want)), "{yaml}\nwanted `{want}` in {got:#?}");
        }
    }

    #[test]
    fn mlflow_urls() {
        let ok = |u: &str| parse_mlflow_url(u).unwrap();
        assert_eq!(
            ok("mlflow://reg:8080/fraud@champion"),
            ("http://reg:8080".into(), "fraud".into(), MlflowSelector::Alias("champion".into()))
        );
        assert_eq!(ok("mlflow://reg/fraud/3"), ("http://reg:5000".into(), "fraud".into(), MlflowSelector::Version(3)));
        assert_eq!(ok("mlflow://reg:1/fraud/production").2, MlflowSelector::Stage("Production".into()));
        assert_eq!(ok("mlflow://reg:1/fraud").2, MlflowSelector::Latest);
        assert_eq!(ok("mlflow://reg:1/fraud/latest").2, MlflowSelector::Latest);
        assert_eq!(ok("mlflow://127.0.0.1:5000/a.b-c_d/1").1, "a.b-c_d");
        for bad in [
            "mlflow://reg:1",
            "mlflow:///m",
            "mlflow://reg:1/",
            "mlflow://reg:1/m@",
            "mlflow://reg:1/m/0",
            "mlflow://reg:1/m/Prod",
            "mlflow://reg:1/../x",
            "mlflow://reg:1/a b",
            "mlflow://re g:1/m",
            "mlflow://reg:x/m",
        ] {
            assert!(parse_mlflow_url(bad).is_err(), "{bad} accepted");
        }
    }
}
