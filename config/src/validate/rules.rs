//! `models.M.rules`: content-routing rules. Each condition is checked for a
//! value that could ever match (a header name that is a token, a known
//! protocol, a path that starts with `/`), and each target against the
//! models, graphs and variants it names: a redirect goes one hop at most,
//! so a target model must have no `model:` rules of its own.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_saphyr::Spanned;

use super::fields::{escaped, header_name, loc, Errors};
use crate::protocol::Protocol;
use crate::raw::*;
use crate::rules::{PathMatch, RuleConditions, RuleConfig, RuleTarget, ValueMatch};

/// The models and graphs a rule's `model:` may name.
pub(super) struct Targets<'a> {
    pub(super) models: &'a BTreeMap<String, Spanned<RawModel>>,
    pub(super) graphs: &'a BTreeSet<String>,
}

/// Most rules per model: they are tried in order on every request.
const MAX_RULES: usize = 64;

pub(super) fn rules(errs: &mut Errors, path: &str, model: &str, m: &RawModel, t: &Targets<'_>) -> Vec<RuleConfig> {
    if m.rules.len() > MAX_RULES {
        errs.at(
            format!("{path}.rules"),
            loc(&m.rules[MAX_RULES]),
            format!("at most {MAX_RULES} rules per model (they are tried in order on every request)"),
        );
    }
    let mut names = BTreeSet::new();
    let mut out = Vec::with_capacity(m.rules.len());
    for (i, r) in m.rules.iter().enumerate() {
        let rp = format!("{path}.rules[{i}]");
        let name = match &r.value.name {
            None => format!("rules[{i}]"),
            Some(n) => {
                let ok = !n.value.is_empty()
                    && n.value.len() <= 128
                    && n.value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:[]".contains(&b));
                if !ok {
                    errs.at(
                        format!("{rp}.name"),
                        loc(n),
                        format!(
                            "rule name `{}` must be 1 to 128 letters, digits or -_.:[] (it labels metrics)",
                            escaped(&n.value)
                        ),
                    );
                }
                n.value.clone()
            }
        };
        if !names.insert(name.clone()) {
            errs.at(format!("{rp}.name"), loc(r), format!("duplicate rule name `{name}` in model `{model}`"));
        }
        let conditions = conditions(errs, &rp, &r.value.matches);
        let target = target(errs, &rp, model, m, r, t);
        out.push(RuleConfig { name: Arc::from(name), conditions, target });
    }
    out
}

fn conditions(errs: &mut Errors, rp: &str, m: &Spanned<RawRuleMatch>) -> RuleConditions {
    let mp = format!("{rp}.match");
    let raw = &m.value;
    let mut c = RuleConditions::default();
    for (name, v) in &raw.headers {
        let hp = format!("{mp}.headers.{name}");
        let spanned = Spanned { value: name.clone(), referenced: *loc(v), defined: *loc(v) };
        let Some(lower) = header_name(errs, &hp, &spanned) else { continue };
        if let Some(vm) = value_match(errs, &hp, v, true) {
            c.headers.push((lower, vm));
        }
    }
    if let Some(p) = &raw.protocol {
        let names: Vec<&str> = match &p.value {
            RawOneOrMany::One(n) => vec![n.as_str()],
            RawOneOrMany::Many(ns) => ns.iter().map(String::as_str).collect(),
        };
        if names.is_empty() {
            errs.at(format!("{mp}.protocol"), loc(p), format!("name at least one protocol ({})", Protocol::names()));
        }
        for n in names {
            match Protocol::from_name(n) {
                Some(proto) if !c.protocols.contains(&proto) => c.protocols.push(proto),
                Some(_) => {}
                None => errs.at(
                    format!("{mp}.protocol"),
                    loc(p),
                    format!("unknown protocol `{}` (expected one of {})", escaped(n), Protocol::names()),
                ),
            }
        }
    }
    if let Some(p) = &raw.path {
        let text = p.value.as_str();
        let body = text.strip_suffix('*').unwrap_or(text);
        if !text.starts_with('/') || body.contains('*') || text.chars().any(|ch| ch.is_control() || ch == ' ') {
            errs.at(
                format!("{mp}.path"),
                loc(p),
                format!(
                    "path `{}` must start with `/`, have no spaces, and use `*` only at its end (a prefix)",
                    escaped(text)
                ),
            );
        } else if text.ends_with('*') {
            c.path = Some(PathMatch::Prefix(body.to_string()));
        } else {
            c.path = Some(PathMatch::Exact(text.to_string()));
        }
    }
    for (name, v) in &raw.parameters {
        let pp = format!("{mp}.parameters.{name}");
        if name.is_empty() {
            errs.at(&pp, loc(v), "a parameter name must not be empty");
            continue;
        }
        if let Some(vm) = value_match(errs, &pp, v, false) {
            c.parameters.push((Arc::from(name.as_str()), vm));
        }
    }
    let nothing_given =
        raw.headers.is_empty() && raw.protocol.is_none() && raw.path.is_none() && raw.parameters.is_empty();
    if nothing_given {
        errs.at(
            &mp,
            loc(m),
            "a rule needs at least one condition (headers, protocol, path or parameters); \
             to send every request to one variant, set the weights instead",
        );
    }
    c
}

/// A value condition; `header`: values are compared with a header's bytes,
/// so one a header can never carry is refused.
fn value_match(errs: &mut Errors, path: &str, v: &Spanned<RawValueMatch>, header: bool) -> Option<ValueMatch> {
    let check = |errs: &mut Errors, s: &str| {
        let bad = header && !s.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
        if bad {
            errs.at(
                path,
                loc(v),
                format!("`{}` can never match: a header value is visible ASCII, spaces and tabs", escaped(s)),
            );
        }
        !bad
    };
    match &v.value {
        RawValueMatch::One(s) => {
            let s = s.text();
            check(errs, &s).then(|| ValueMatch::AnyOf(vec![s]))
        }
        RawValueMatch::AnyOf(list) if list.is_empty() => {
            errs.at(path, loc(v), "an empty list matches nothing: give at least one value");
            None
        }
        RawValueMatch::AnyOf(list) => {
            let texts: Vec<String> = list.iter().map(RawScalar::text).collect();
            texts.iter().all(|s| check(errs, s)).then_some(ValueMatch::AnyOf(texts))
        }
        RawValueMatch::Op(op) => match (&op.prefix, op.present) {
            (Some(p), None) if p.is_empty() => {
                errs.at(path, loc(v), "an empty prefix matches any value: write `{present: true}`");
                None
            }
            (Some(p), None) => check(errs, p).then(|| ValueMatch::Prefix(p.clone())),
            (None, Some(b)) => Some(ValueMatch::Present(b)),
            _ => {
                errs.at(path, loc(v), "give a value, a list of values, `{prefix: ...}` or `{present: true|false}`");
                None
            }
        },
    }
}

fn target(
    errs: &mut Errors,
    rp: &str,
    model: &str,
    own: &RawModel,
    r: &Spanned<RawRule>,
    t: &Targets<'_>,
) -> RuleTarget {
    let raw = &r.value;
    if raw.model.is_none() && raw.variant.is_none() {
        errs.at(rp, loc(r), "a rule needs `variant` (one of this model's), `model` (another model), or both");
    }
    // The variants the target model has, and whether it redirects again.
    let mut variants_of: Option<&RawModel> = Some(own);
    if let Some(m) = &raw.model {
        let name = m.value.as_str();
        let mp = format!("{rp}.model");
        variants_of = None;
        if name == model {
            errs.at(&mp, loc(m), format!("`{name}` is this rule's own model: name only `variant`"));
        } else if name == "*" {
            errs.at(&mp, loc(m), "`*` is the catch-all route, not a model: name a model or graph");
        } else if let Some(target) = t.models.get(name) {
            variants_of = Some(&target.value);
            if let Some(hop) = target.value.rules.iter().find(|x| x.value.model.is_some()) {
                let next = hop.value.model.as_ref().map_or("", |x| x.value.as_str());
                errs.at(
                    &mp,
                    loc(m),
                    format!(
                        "model `{name}` redirects to `{next}` by a rule of its own: a redirect goes one hop, \
                         so point this rule at the final model (or drop `{name}`'s model rules)"
                    ),
                );
            }
        } else if t.graphs.contains(name) {
            if let Some(v) = &raw.variant {
                errs.at(format!("{rp}.variant"), loc(v), format!("`{name}` is a graph: it has no variants to name"));
            }
        } else {
            let mut known: Vec<&str> = t.models.keys().map(String::as_str).filter(|k| *k != "*").collect();
            known.extend(t.graphs.iter().map(String::as_str));
            errs.at(
                &mp,
                loc(m),
                format!("unknown model `{}` (models and graphs: {})", escaped(name), known.join(", ")),
            );
        }
    }
    if let (Some(v), Some(target)) = (&raw.variant, variants_of) {
        let owner = raw.model.as_ref().map_or(model, |m| m.value.as_str());
        match target.variants.value.iter().find(|x| x.value.name.value == v.value) {
            None => {
                let known: Vec<&str> = target.variants.value.iter().map(|x| x.value.name.value.as_str()).collect();
                errs.at(
                    format!("{rp}.variant"),
                    loc(v),
                    format!("model `{owner}` has no variant `{}` (variants: {})", escaped(&v.value), known.join(", ")),
                );
            }
            Some(x) if x.value.shadow_percent.is_some() => errs.at(
                format!("{rp}.variant"),
                loc(v),
                format!(
                    "variant `{}` of model `{owner}` is a shadow (mirrored copies only): it cannot answer",
                    v.value
                ),
            ),
            Some(_) => {}
        }
    }
    RuleTarget {
        model: raw.model.as_ref().map(|m| Arc::from(m.value.as_str())),
        variant: raw.variant.as_ref().map(|v| Arc::from(v.value.as_str())),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::parse;
    use super::*;

    const HEAD: &str = "backends:\n  b: {kind: v2-http, endpoints: ['http://h:1']}\nmodels:\n";

    fn config(models: &str) -> String {
        format!("{HEAD}{models}")
    }

    #[test]
    fn rules_parse_into_conditions_and_targets() {
        let yaml = config(
            r#"  m:
    rules:
      - name: gold
        match: {headers: {X-Tenant: gold}}
        variant: dedicated
      - match:
          protocol: [tfserving-rest, tfserving-grpc]
          parameters: {signature_name: classify, priority: 1}
        model: other
      - match: {path: "/v2/models/m/*", headers: {x-beta: {present: true}, x-region: [eu, us]}}
        model: other
        variant: b
      - match: {protocol: v2-grpc, parameters: {tag: {prefix: exp-}}}
        model: g
    variants:
      - {name: main, backend: b}
      - {name: dedicated, backend: b, weight: 0}
  other:
    rules:
      - match: {headers: {x-tenant: gold}}
        variant: b
    variants:
      - {name: a, backend: b}
      - {name: b, backend: b, weight: 0}
graphs:
  g:
    steps:
      - {name: s, model: other}
"#,
        );
        let c = parse(&yaml, Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
        let r = &c.models["m"].rules;
        assert_eq!(r.len(), 4);
        assert_eq!(r[0].name.as_ref(), "gold");
        assert_eq!(r[0].conditions.headers, vec![("x-tenant".into(), ValueMatch::AnyOf(vec!["gold".into()]))]);
        assert_eq!(r[0].target, RuleTarget { model: None, variant: Some("dedicated".into()) });
        assert_eq!(r[1].name.as_ref(), "rules[1]");
        assert_eq!(r[1].conditions.protocols, vec![Protocol::TfServingRest, Protocol::TfServingGrpc]);
        assert_eq!(
            r[1].conditions.parameters,
            vec![
                (Arc::from("priority"), ValueMatch::AnyOf(vec!["1".into()])),
                (Arc::from("signature_name"), ValueMatch::AnyOf(vec!["classify".into()]))
            ]
        );
        assert_eq!(r[2].conditions.path, Some(PathMatch::Prefix("/v2/models/m/".into())));
        assert!(r[2].conditions.headers.contains(&("x-beta".into(), ValueMatch::Present(true))));
        assert!(r[2]
            .conditions
            .headers
            .contains(&("x-region".into(), ValueMatch::AnyOf(vec!["eu".into(), "us".into()]))));
        assert_eq!(r[2].target, RuleTarget { model: Some("other".into()), variant: Some("b".into()) });
        assert_eq!(r[3].conditions.parameters[0].1, ValueMatch::Prefix("exp-".into()));
        assert_eq!(r[3].target.model.as_deref(), Some("g"));
        assert!(c.models["other"].rules[0].target.model.is_none());
    }

    /// Each bad rule is named at its field, with a reason.
    #[test]
    fn bad_rules_are_located() {
        let variants = "    variants:\n      - {name: a, backend: b}\n      - {name: s, backend: b, weight: 0, shadow_percent: 5}\n";
        let one = |rule: &str| {
            config(&format!(
                "  m:\n    rules:\n      - {rule}\n{variants}  n:\n    variants: [{{name: x, backend: b}}]\n"
            ))
        };
        #[rustfmt::skip]
        let cases: Vec<(&str, String, &str, &str)> = vec![
            ("empty match", one("{match: {}, variant: a}"), "models.m.rules[0].match", "at least one condition"),
            ("no target", one("{match: {protocol: v2-http}}"), "models.m.rules[0]", "needs `variant`"),
            ("unknown variant", one("{match: {protocol: v2-http}, variant: zz}"), "models.m.rules[0].variant", "model `m` has no variant `zz` (variants: a, s)"),
            ("shadow variant", one("{match: {protocol: v2-http}, variant: s}"), "models.m.rules[0].variant", "is a shadow"),
            ("unknown model", one("{match: {protocol: v2-http}, model: nope}"), "models.m.rules[0].model", "unknown model `nope` (models and graphs: m, n)"),
            ("own model", one("{match: {protocol: v2-http}, model: m}"), "models.m.rules[0].model", "this rule's own model"),
            ("variant of another model", one("{match: {protocol: v2-http}, model: n, variant: a}"), "models.m.rules[0].variant", "model `n` has no variant `a`"),
            ("unknown protocol", one("{match: {protocol: [v2-http, grpc]}, variant: a}"), "models.m.rules[0].match.protocol", "unknown protocol `grpc` (expected one of v2-http, v2-grpc, tfserving-rest"),
            ("bad header name", one("{match: {headers: {'x tenant': gold}}, variant: a}"), "models.m.rules[0].match.headers.x tenant", "is not a valid HTTP header name"),
            ("header value that cannot be", one("{match: {headers: {x-t: \"g\\nold\"}}, variant: a}"), "models.m.rules[0].match.headers.x-t", "can never match"),
            ("empty value list", one("{match: {headers: {x-t: []}}, variant: a}"), "models.m.rules[0].match.headers.x-t", "empty list matches nothing"),
            ("empty prefix", one("{match: {parameters: {p: {prefix: ''}}}, variant: a}"), "models.m.rules[0].match.parameters.p", "empty prefix"),
            ("prefix and present", one("{match: {parameters: {p: {prefix: a, present: true}}}, variant: a}"), "models.m.rules[0].match.parameters.p", "give a value"),
            ("relative path", one("{match: {path: v2/models}, variant: a}"), "models.m.rules[0].match.path", "must start with `/`"),
            ("inner star", one("{match: {path: '/v2/*/infer'}, variant: a}"), "models.m.rules[0].match.path", "only at its end"),
            ("bad name", one("{name: 'a b', match: {protocol: v2-http}, variant: a}"), "models.m.rules[0].name", "must be 1 to 128"),
            ("catch-all target", one("{match: {protocol: v2-http}, model: '*'}"), "models.m.rules[0].model", "catch-all"),
        ];
        for (what, yaml, path, says) in &cases {
            let errs = parse(yaml, Path::new(".")).expect_err(what).errors;
            let hit = errs.iter().find(|e| e.path == *path);
            let hit = hit.unwrap_or_else(|| panic!("{what}: no error at `{path}`: {errs:?}"));
            assert!(hit.message.contains(says), "{what}: `{}` does not say `{says}`", hit.message);
            assert!(hit.line > 0, "{what}: no location in {hit}");
        }
    }

    #[test]
    fn duplicate_names_and_chains_are_refused() {
        let yaml = config(
            "  m:\n    rules:\n      - {name: r, match: {protocol: v2-http}, model: n}\n      - {name: r, match: {protocol: v2-grpc}, model: n}\n    variants: [{name: a, backend: b}]\n  n:\n    rules:\n      - {match: {protocol: v2-http}, model: o}\n    variants: [{name: x, backend: b}]\n  o:\n    rules:\n      - {match: {protocol: v2-http}, model: n}\n    variants: [{name: y, backend: b}]\n",
        );
        let errs = parse(&yaml, Path::new(".")).unwrap_err().errors;
        let at = |p: &str, says: &str| {
            assert!(errs.iter().any(|e| e.path == p && e.message.contains(says)), "{p}: {says}: {errs:?}");
        };
        at("models.m.rules[1].name", "duplicate rule name `r`");
        at("models.m.rules[0].model", "model `n` redirects to `o`");
        // A cycle is a chain too: both ends are named.
        at("models.n.rules[0].model", "model `o` redirects to `n`");
        at("models.o.rules[0].model", "model `n` redirects to `o`");
    }
}
