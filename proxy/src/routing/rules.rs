//! Content routing: a route's rules, tried in order before the weighted
//! split (`models.M.rules`, docs/routing.md). A rule matches on the
//! request's protocol, path, headers (gRPC metadata) and request parameters,
//! and names a variant of its own route or another route. Pure: compiled
//! once per snapshot (header names parsed, variants resolved to indices,
//! match counters resolved), evaluated without allocating.

use std::sync::Arc;

use http::{HeaderMap, HeaderName};
use prometheus::IntCounter;
use switchyard_config::{PathMatch, RuleConfig, ValueMatch};

use crate::protocol::{Param, Protocol};

/// A route's rules in their order; empty for a route without any.
#[derive(Default)]
pub struct Rules {
    rules: Box<[Rule]>,
}

pub struct Rule {
    pub name: Arc<str>,
    protocols: Box<[Protocol]>,
    path: Option<PathMatch>,
    headers: Box<[(HeaderName, ValueMatch)]>,
    parameters: Box<[(Arc<str>, ValueMatch)]>,
    /// The names in `parameters`, for `pipeline::Routed`.
    parameter_names: Box<[Arc<str>]>,
    pub target: Target,
    hits: IntCounter,
}

/// Where a matching request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The variant at this index of the rule's own route.
    Variant(usize),
    /// Another route: the variant of that name, or (`None`) its own rules, then its split.
    Route { model: Arc<str>, variant: Option<Arc<str>> },
}

/// What a rule can see of a request before its body is read.
pub struct Facts<'a> {
    pub protocol: Protocol,
    pub path: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// The outcome of trying a route's rules.
pub enum Verdict<'r> {
    Matched(&'r Rule),
    NoMatch,
    /// A rule whose other conditions hold matches on request parameters,
    /// and they were not given: read them (`Exchange::read_parameters`) and try again.
    NeedsParameters,
}

/// A request parameter lookup: `Exchange::parameter`.
pub type Parameters<'p> = &'p dyn Fn(&str) -> Option<Param<'p>>;

impl Rules {
    /// Compiles `model`'s rules; `variants` are its variants' names in route
    /// order, `counter` makes a rule's match counter.
    pub fn build(
        model: &str,
        cfg: &[RuleConfig],
        variants: &[&str],
        counter: impl Fn(&str) -> IntCounter,
    ) -> Result<Rules, String> {
        let mut rules = Vec::with_capacity(cfg.len());
        for r in cfg {
            let target = match (&r.target.model, &r.target.variant) {
                (None, Some(v)) => Target::Variant(
                    variants
                        .iter()
                        .position(|n| *n == v.as_ref())
                        .ok_or_else(|| format!("model `{model}` rule `{}`: no variant `{v}`", r.name))?,
                ),
                (Some(m), v) => Target::Route { model: m.clone(), variant: v.clone() },
                (None, None) => return Err(format!("model `{model}` rule `{}` has no target", r.name)),
            };
            let headers = r
                .conditions
                .headers
                .iter()
                .map(|(h, m)| {
                    let name = HeaderName::from_bytes(h.as_bytes())
                        .map_err(|_| format!("model `{model}` rule `{}`: bad header name `{h}`", r.name))?;
                    Ok((name, m.clone()))
                })
                .collect::<Result<Vec<_>, String>>()?;
            rules.push(Rule {
                name: r.name.clone(),
                protocols: r.conditions.protocols.clone().into(),
                path: r.conditions.path.clone(),
                headers: headers.into(),
                parameters: r.conditions.parameters.clone().into(),
                parameter_names: r.conditions.parameters.iter().map(|(n, _)| n.clone()).collect(),
                target,
                hits: counter(&r.name),
            });
        }
        Ok(Rules { rules: rules.into() })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The first rule the request matches. `params`: `None` until the request's
    /// parameters were read; a rule that would need them then says so.
    pub fn evaluate<'p>(&self, facts: &Facts<'_>, params: Option<Parameters<'p>>) -> Verdict<'_> {
        for rule in self.rules.iter() {
            if !rule.matches_without_parameters(facts) {
                continue;
            }
            if rule.parameters.is_empty() {
                return Verdict::Matched(rule);
            }
            let Some(params) = params else { return Verdict::NeedsParameters };
            if rule.parameters.iter().all(|(name, m)| value_matches(params(name), m)) {
                return Verdict::Matched(rule);
            }
        }
        Verdict::NoMatch
    }
}

impl Rule {
    fn matches_without_parameters(&self, facts: &Facts<'_>) -> bool {
        (self.protocols.is_empty() || self.protocols.contains(&facts.protocol))
            && self.path.as_ref().is_none_or(|p| facts.path.is_some_and(|path| p.matches(path)))
            && self.headers.iter().all(|(name, m)| header_matches(facts.headers, name, m))
    }

    /// The request parameters this rule matches on.
    pub fn parameter_names(&self) -> &[Arc<str>] {
        &self.parameter_names
    }

    /// Counts a request this rule routed.
    pub fn hit(&self) {
        self.hits.inc();
    }
}

/// A header with several values matches when any of them does.
fn header_matches(headers: &HeaderMap, name: &HeaderName, m: &ValueMatch) -> bool {
    match m {
        ValueMatch::Present(want) => headers.contains_key(name) == *want,
        ValueMatch::AnyOf(values) => {
            headers.get_all(name).iter().any(|v| values.iter().any(|w| v.as_bytes() == w.as_bytes()))
        }
        ValueMatch::Prefix(p) => headers.get_all(name).iter().any(|v| v.as_bytes().starts_with(p.as_bytes())),
    }
}

fn value_matches(value: Option<Param<'_>>, m: &ValueMatch) -> bool {
    match (m, value) {
        (ValueMatch::Present(want), v) => v.is_some() == *want,
        (_, None) => false,
        (ValueMatch::AnyOf(values), Some(v)) => values.iter().any(|w| v.equals(w)),
        (ValueMatch::Prefix(p), Some(v)) => v.has_prefix(p),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use http::HeaderValue;
    use serde_json::json;

    use super::*;

    /// The rules of model `m` in `yaml`'s `models:` section, compiled.
    fn rules(models: &str) -> Rules {
        let yaml = format!("backends:\n  b: {{kind: v2-http, endpoints: ['http://h:1']}}\nmodels:\n{models}");
        let cfg = switchyard_config::ValidatedConfig::parse(&yaml, Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
        let m = &cfg.models["m"];
        let names: Vec<&str> = m.variants.iter().map(|v| v.name.as_ref()).collect();
        Rules::build("m", &m.rules, &names, |_| IntCounter::new("c", "c").unwrap()).unwrap()
    }

    const RULES: &str = r#"  m:
    rules:
      - name: gold
        match: {headers: {x-tenant: [gold, platinum]}}
        variant: dedicated
      - name: classify
        match: {protocol: tfserving-rest, parameters: {signature_name: classify}}
        model: other
      - name: beta
        match: {path: "/v2/models/m/versions/*", headers: {x-beta: {present: true}}}
        variant: dedicated
      - name: tagged
        match: {parameters: {tag: {prefix: exp-}, debug: {present: false}}}
        variant: dedicated
    variants:
      - {name: main, backend: b}
      - {name: dedicated, backend: b, weight: 0}
  other:
    variants: [{name: a, backend: b}]
"#;

    fn facts<'a>(protocol: Protocol, path: &'a str, headers: &'a HeaderMap) -> Facts<'a> {
        Facts { protocol, path: Some(path), headers }
    }

    fn name(v: Verdict<'_>) -> String {
        match v {
            Verdict::Matched(r) => r.name.to_string(),
            Verdict::NoMatch => "-".into(),
            Verdict::NeedsParameters => "?".into(),
        }
    }

    #[test]
    fn first_match_wins_and_parameters_are_read_only_when_needed() {
        let r = rules(RULES);
        let mut h = HeaderMap::new();
        // A header rule decides before any rule needing parameters is reached.
        h.insert("x-tenant", HeaderValue::from_static("platinum"));
        assert_eq!(name(r.evaluate(&facts(Protocol::V2Http, "/v2/models/m/infer", &h), None)), "gold");
        h.clear();
        // The parameter rule of TF Serving needs the body; V2 HTTP skips it, then needs it for `tagged`.
        assert_eq!(name(r.evaluate(&facts(Protocol::TfServingRest, "/v1/models/m:predict", &h), None)), "?");
        let sig = json!("classify");
        let p = |n: &str| (n == "signature_name").then(|| Param::from_json(&sig)).flatten();
        assert_eq!(name(r.evaluate(&facts(Protocol::TfServingRest, "/v1/models/m:predict", &h), Some(&p))), "classify");
        assert_eq!(name(r.evaluate(&facts(Protocol::V2Http, "/v2/models/m/infer", &h), Some(&p))), "-");
        // Path prefix and presence.
        h.insert("x-beta", HeaderValue::from_static(""));
        assert_eq!(name(r.evaluate(&facts(Protocol::V2Grpc, "/v2/models/m/versions/3/infer", &h), None)), "beta");
        assert_eq!(name(r.evaluate(&facts(Protocol::V2Http, "/v2/models/m/infer", &h), Some(&p))), "-");
        // A parameter prefix, and a parameter that must be absent.
        let (tag, debug) = (json!("exp-7"), json!(true));
        let tagged = |n: &str| (n == "tag").then(|| Param::from_json(&tag)).flatten();
        let both = |n: &str| match n {
            "tag" => Param::from_json(&tag),
            "debug" => Param::from_json(&debug),
            _ => None,
        };
        h.clear();
        assert_eq!(name(r.evaluate(&facts(Protocol::V2Http, "/x", &h), Some(&tagged))), "tagged");
        assert_eq!(name(r.evaluate(&facts(Protocol::V2Http, "/x", &h), Some(&both))), "-");
    }

    #[test]
    fn header_values_are_exact_and_any_value_of_a_repeated_header_counts() {
        let r = rules(RULES);
        let mut h = HeaderMap::new();
        h.insert("x-tenant", HeaderValue::from_static("Gold"));
        assert_eq!(name(r.evaluate(&facts(Protocol::V2Http, "/", &h), Some(&|_| None))), "-");
        h.append("X-Tenant", HeaderValue::from_static("gold"));
        assert_eq!(name(r.evaluate(&facts(Protocol::V2Http, "/", &h), None)), "gold");
    }

    #[test]
    fn targets_resolve_to_indices_or_routes() {
        let r = rules(RULES);
        assert_eq!(r.rules[0].target, Target::Variant(1));
        assert_eq!(r.rules[1].target, Target::Route { model: "other".into(), variant: None });
        assert_eq!(r.rules[1].parameter_names(), &[Arc::from("signature_name")]);
    }
}
