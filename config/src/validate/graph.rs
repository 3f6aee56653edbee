//! The `graphs` section: steps, their references to routes (models or other
//! graphs, never a cycle), combines that fit their step, weights that match
//! their members, and tensor names where the file itself names them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_saphyr::{Location, Spanned};

use super::fields::{loc, Errors};
use crate::graph::*;
use crate::raw::*;

pub(super) fn graphs(
    errs: &mut Errors,
    raw: BTreeMap<String, Spanned<RawGraph>>,
    models: &BTreeSet<String>,
) -> BTreeMap<Arc<str>, GraphConfig> {
    let graph_names: BTreeSet<&str> = raw.keys().map(String::as_str).collect();
    let mut out = BTreeMap::new();
    // Where each graph refers to another graph: the edges a cycle runs along.
    let mut edges: BTreeMap<String, Vec<(String, Location)>> = BTreeMap::new();
    for (name, g) in &raw {
        let path = format!("graphs.{name}");
        if name.is_empty() || name == "*" {
            errs.at(&path, loc(g), "a graph needs a name of its own (not empty, not `*`)");
            continue;
        }
        if models.contains(name) {
            errs.at(&path, loc(g), format!("`{name}` is both a model and a graph: a route has one name"));
            continue;
        }
        let mut refer = |errs: &mut Errors, p: &str, r: &Spanned<String>| -> Arc<str> {
            let target = r.value.as_str();
            if graph_names.contains(target) {
                edges.entry(name.clone()).or_default().push((target.to_string(), *loc(r)));
            } else if !models.contains(target) || target == "*" {
                let known: Vec<&str> = models
                    .iter()
                    .map(String::as_str)
                    .chain(graph_names.iter().copied())
                    .filter(|m| *m != "*")
                    .collect();
                errs.at(p, loc(r), format!("unknown model `{target}` (models and graphs: {})", known.join(", ")));
            }
            Arc::from(target)
        };
        let steps_raw = &g.value.steps;
        if steps_raw.value.is_empty() {
            errs.at(format!("{path}.steps"), loc(steps_raw), "a graph needs at least one step");
        }
        let mut seen = BTreeSet::new();
        let mut steps = Vec::with_capacity(steps_raw.value.len());
        for (i, s) in steps_raw.value.iter().enumerate() {
            let sp = format!("{path}.steps[{i}]");
            let st = &s.value;
            if st.name.value.is_empty() {
                errs.at(format!("{sp}.name"), loc(&st.name), "a step needs a name (errors name it)");
            } else if !seen.insert(st.name.value.clone()) {
                errs.at(format!("{sp}.name"), loc(&st.name), format!("step name `{}` is used twice", st.name.value));
            }
            let kinds = [st.model.is_some(), st.fan_out.is_some(), st.condition.is_some()];
            if kinds.iter().filter(|k| **k).count() != 1 {
                errs.at(&sp, loc(s), "a step has exactly one of `model`, `fan_out` and `condition`");
                continue;
            }
            if let (Some(c), None) = (&st.combine, &st.fan_out) {
                errs.at(
                    format!("{sp}.combine"),
                    loc(c),
                    "`combine` merges the members of a `fan_out`; this step has none",
                );
            }
            let kind = if let Some(m) = &st.model {
                StepKind::Model(refer(errs, &format!("{sp}.model"), m))
            } else if let Some(f) = &st.fan_out {
                fan_out(errs, &sp, f, st.combine.as_ref(), &mut refer)
            } else {
                let c = st.condition.as_ref().expect("checked");
                StepKind::Condition(condition(errs, &format!("{sp}.condition"), c, &mut refer))
            };
            let pairs = |errs: &mut Errors, field: &str, m: &BTreeMap<String, Spanned<String>>| {
                let mut targets = BTreeSet::new();
                let mut v = Vec::new();
                for (k, t) in m {
                    if k.is_empty() || t.value.is_empty() {
                        errs.at(format!("{sp}.{field}.{k}"), loc(t), "tensor names must not be empty");
                    } else if field == "outputs" && !targets.insert(t.value.clone()) {
                        errs.at(
                            format!("{sp}.{field}.{k}"),
                            loc(t),
                            format!("two outputs are renamed to `{}`", t.value),
                        );
                    }
                    v.push((k.clone(), t.value.clone()));
                }
                v
            };
            if let (Some(_), Some((k, t))) = (&st.fan_out, st.outputs.iter().next()) {
                errs.at(
                    format!("{sp}.outputs.{k}"),
                    loc(t),
                    "a fan-out answers one tensor: name it with `combine.output`",
                );
            }
            let inputs = pairs(errs, "inputs", &st.inputs);
            let outputs = pairs(errs, "outputs", &st.outputs);
            steps.push(StepConfig {
                name: Arc::from(st.name.value.as_str()),
                kind,
                inputs,
                outputs,
                optional: st.optional.as_ref().is_some_and(|o| o.value),
            });
        }
        let outputs = g.value.outputs.as_ref().map(|o| {
            let mut names = BTreeSet::new();
            o.value
                .iter()
                .filter_map(|n| {
                    if n.value.is_empty() || !names.insert(n.value.clone()) {
                        errs.at(format!("{path}.outputs"), loc(n), format!("bad or repeated output `{}`", n.value));
                        return None;
                    }
                    Some(n.value.clone())
                })
                .collect()
        });
        if let Some(o) = &g.value.outputs {
            if o.value.is_empty() {
                errs.at(format!("{path}.outputs"), loc(o), "`outputs` lists at least one tensor (or leave it out)");
            }
        }
        out.insert(Arc::<str>::from(name.as_str()), GraphConfig { name: Arc::from(name.as_str()), steps, outputs });
    }
    cycles(errs, &edges);
    out
}

fn fan_out(
    errs: &mut Errors,
    sp: &str,
    f: &Spanned<Vec<Spanned<RawMember>>>,
    combine: Option<&Spanned<RawCombine>>,
    refer: &mut impl FnMut(&mut Errors, &str, &Spanned<String>) -> Arc<str>,
) -> StepKind {
    if f.value.len() < 2 {
        errs.at(format!("{sp}.fan_out"), loc(f), "a fan-out has at least two members (one is a `model` step)");
    }
    let mut members: Vec<Member> = f
        .value
        .iter()
        .enumerate()
        .map(|(j, m)| Member {
            model: refer(errs, &format!("{sp}.fan_out[{j}].model"), &m.value.model),
            optional: m.value.optional.as_ref().is_some_and(|o| o.value),
            weight: 1.0,
        })
        .collect();
    let Some(c) = combine else {
        errs.at(
            format!("{sp}.fan_out"),
            loc(f),
            "a fan-out needs `combine` (average, majority_vote, weighted_vote, max or concat)",
        );
        return StepKind::FanOut {
            members,
            combine: Combine { op: CombineOp::Concat, tensor: String::new(), output: String::new() },
        };
    };
    let cp = format!("{sp}.combine");
    let op = CombineOp::parse(&c.value.op.value).unwrap_or_else(|| {
        errs.at(
            format!("{cp}.op"),
            loc(&c.value.op),
            format!("unknown combine `{}` (average, majority_vote, weighted_vote, max, concat)", c.value.op.value),
        );
        CombineOp::Concat
    });
    let weighted = matches!(op, CombineOp::Average | CombineOp::WeightedVote);
    match &c.value.weights {
        None if op == CombineOp::WeightedVote => {
            errs.at(&cp, loc(c), "`weighted_vote` needs `weights`, one per member");
        }
        None => {}
        Some(w) if !weighted => errs.at(
            format!("{cp}.weights"),
            loc(w),
            format!("`{}` takes no weights (only average and weighted_vote do)", op.as_str()),
        ),
        Some(w) if w.value.len() != members.len() => errs.at(
            format!("{cp}.weights"),
            loc(w),
            format!("{} weights for {} members: give one per member", w.value.len(), members.len()),
        ),
        Some(w) => {
            for (j, (m, x)) in members.iter_mut().zip(&w.value).enumerate() {
                if !(x.value.is_finite() && x.value > 0.0) {
                    errs.at(format!("{cp}.weights[{j}]"), loc(x), format!("weight {} must be above 0", x.value));
                }
                m.weight = x.value;
            }
        }
    }
    if c.value.tensor.value.is_empty() {
        errs.at(format!("{cp}.tensor"), loc(&c.value.tensor), "name the member output to combine");
    }
    let output = c.value.output.as_ref().map_or_else(|| c.value.tensor.value.clone(), |o| o.value.clone());
    StepKind::FanOut { members, combine: Combine { op, tensor: c.value.tensor.value.clone(), output } }
}

fn condition(
    errs: &mut Errors,
    cp: &str,
    c: &Spanned<RawCondition>,
    refer: &mut impl FnMut(&mut Errors, &str, &Spanned<String>) -> Arc<str>,
) -> Condition {
    let on = match (&c.value.tensor, &c.value.parameter) {
        (Some(t), None) if !t.value.is_empty() => ConditionSource::Tensor(t.value.clone()),
        (None, Some(p)) if !p.value.is_empty() => ConditionSource::Parameter(p.value.clone()),
        _ => {
            errs.at(cp, loc(c), "a condition reads exactly one of `tensor` and `parameter` (a non-empty name)");
            ConditionSource::Parameter(String::new())
        }
    };
    if c.value.cases.value.is_empty() {
        errs.at(format!("{cp}.cases"), loc(&c.value.cases), "a condition needs at least one case");
    }
    let cases = c
        .value
        .cases
        .value
        .iter()
        .enumerate()
        .map(|(j, k)| {
            let kp = format!("{cp}.cases[{j}]");
            let test = match (&k.value.equals, &k.value.above, &k.value.below) {
                (Some(e), None, None) => CaseTest::Equals(e.value.clone()),
                (None, Some(a), None) => CaseTest::Above(a.value),
                (None, None, Some(b)) => CaseTest::Below(b.value),
                _ => {
                    errs.at(&kp, loc(k), "a case has exactly one of `equals`, `above` and `below`");
                    CaseTest::Equals(String::new())
                }
            };
            Case { test, model: refer(errs, &format!("{kp}.model"), &k.value.model) }
        })
        .collect();
    let default = c.value.default.as_ref().map(|d| refer(errs, &format!("{cp}.default"), d));
    Condition { on, cases, default }
}

/// A graph that reaches itself through other graphs would never answer.
fn cycles(errs: &mut Errors, edges: &BTreeMap<String, Vec<(String, Location)>>) {
    let mut reported = BTreeSet::new();
    for start in edges.keys() {
        // A cycle is reported once, from the first of its graphs.
        if reported.contains(start) {
            continue;
        }
        // Depth-first from `start`, along the first path to each graph.
        let mut stack: Vec<(String, Vec<String>)> = vec![(start.clone(), vec![start.clone()])];
        let mut visited = BTreeSet::new();
        while let Some((at, path)) = stack.pop() {
            for (next, l) in edges.get(&at).into_iter().flatten() {
                if next == start {
                    if !reported.contains(start) {
                        let mut ring = path.clone();
                        ring.push(start.clone());
                        reported.extend(path.iter().cloned());
                        errs.at(
                            format!("graphs.{at}"),
                            l,
                            format!("graph cycle: {} (a graph may not call itself)", ring.join(" → ")),
                        );
                    }
                } else if visited.insert(next.clone()) {
                    let mut p = path.clone();
                    p.push(next.clone());
                    stack.push((next.clone(), p));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::graph::{CombineOp, StepKind};
    use crate::validated::*;

    const HEAD: &str = r#"
backends:
  a:
    kind: v2-http
    endpoints: ["http://127.0.0.1:9000"]
models:
  m1: { variants: [{ name: v, backend: a }] }
  m2: { variants: [{ name: v, backend: a }] }
  m3: { variants: [{ name: v, backend: a }] }
graphs:
"#;

    fn errors(graphs: &str) -> Vec<String> {
        ValidatedConfig::parse(&format!("{HEAD}{graphs}"), Path::new("."))
            .expect_err("config should be rejected")
            .errors
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_good_graph_validates_with_every_step_kind() {
        let cfg = ValidatedConfig::parse(
            &format!(
                "{HEAD}{}",
                r#"
  vote:
    steps:
      - name: scale
        model: m1
        inputs: { x: features }
        outputs: { y: input }
      - name: vote
        fan_out: [{ model: m1 }, { model: m2, optional: true }, { model: m3 }]
        combine: { op: weighted_vote, tensor: probabilities, output: class, weights: [0.5, 0.3, 0.2] }
  routed:
    steps:
      - name: pick
        condition:
          parameter: tier
          cases: [{ equals: premium, model: vote }, { above: 0.5, model: m2 }]
          default: m1
        optional: true
"#
            ),
            Path::new("."),
        )
        .expect("valid");
        let g = &cfg.graphs["vote"];
        assert_eq!(g.steps[0].inputs, vec![("x".to_string(), "features".to_string())]);
        match &g.steps[1].kind {
            StepKind::FanOut { members, combine } => {
                assert_eq!(members.iter().map(|m| m.weight).collect::<Vec<_>>(), vec![0.5, 0.3, 0.2]);
                assert!(members[1].optional);
                assert_eq!((combine.op, combine.output.as_str()), (CombineOp::WeightedVote, "class"));
            }
            k => panic!("{k:?}"),
        }
        assert!(cfg.graphs["routed"].steps[0].optional);
    }

    #[test]
    fn unknown_models_are_named_at_their_line() {
        let e = errors("  g:\n    steps:\n      - { name: s, model: nope }\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("graphs.g.steps[0].model (13:") && e[0].contains("unknown model `nope`"), "{e:?}");
    }

    #[test]
    fn cycles_through_other_graphs_are_refused() {
        let e = errors(
            "  a:\n    steps: [{ name: s, model: b }]\n  b:\n    steps: [{ name: s, model: c }]\n  c:\n    steps: [{ name: s, model: a }]\n",
        );
        assert!(e.iter().any(|e| e.contains("graph cycle: a → b → c → a")), "{e:?}");
        assert_eq!(e.len(), 1, "one cycle, one error: {e:?}");
        let e = errors("  a:\n    steps: [{ name: s, model: a }]\n");
        assert!(e.iter().any(|e| e.contains("graph cycle: a → a")), "{e:?}");
    }

    #[test]
    fn combines_must_fit_their_step() {
        let fan = |combine: &str| {
            errors(&format!(
                "  g:\n    steps:\n      - name: f\n        fan_out: [{{ model: m1 }}, {{ model: m2 }}]\n        combine: {combine}\n"
            ))
        };
        let e = fan("{ op: weighted_vote, tensor: p, weights: [1, 2, 3] }");
        assert!(e.iter().any(|e| e.contains("3 weights for 2 members")), "{e:?}");
        let e = fan("{ op: weighted_vote, tensor: p }");
        assert!(e.iter().any(|e| e.contains("`weighted_vote` needs `weights`")), "{e:?}");
        let e = fan("{ op: max, tensor: p, weights: [1, 2] }");
        assert!(e.iter().any(|e| e.contains("`max` takes no weights")), "{e:?}");
        let e = fan("{ op: median, tensor: p }");
        assert!(e.iter().any(|e| e.contains("unknown combine `median`")), "{e:?}");
        let e = fan("{ op: average, tensor: p, weights: [1, -2] }");
        assert!(e.iter().any(|e| e.contains("weights[1]") && e.contains("above 0")), "{e:?}");
        let e = errors("  g:\n    steps:\n      - { name: f, model: m1, combine: { op: max, tensor: p } }\n");
        assert!(e.iter().any(|e| e.contains("merges the members of a `fan_out`")), "{e:?}");
        let e = errors("  g:\n    steps:\n      - { name: f, fan_out: [{ model: m1 }, { model: m2 }] }\n");
        assert!(e.iter().any(|e| e.contains("a fan-out needs `combine`")), "{e:?}");
    }

    #[test]
    fn step_shapes_and_names_are_checked() {
        let e = errors("  g:\n    steps:\n      - { name: s, model: m1, fan_out: [{ model: m2 }] }\n");
        assert!(e.iter().any(|e| e.contains("exactly one of `model`, `fan_out` and `condition`")), "{e:?}");
        let e = errors("  g:\n    steps: [{ name: s, model: m1 }, { name: s, model: m2 }]\n");
        assert!(e.iter().any(|e| e.contains("step name `s` is used twice")), "{e:?}");
        let e = errors("  m1:\n    steps: [{ name: s, model: m2 }]\n");
        assert!(e.iter().any(|e| e.contains("both a model and a graph")), "{e:?}");
        let e = errors(
            "  g:\n    steps:\n      - name: c\n        condition: { tensor: t, parameter: p, cases: [{ above: 1, below: 2, model: m1 }] }\n",
        );
        assert!(e.iter().any(|e| e.contains("exactly one of `tensor` and `parameter`")), "{e:?}");
        assert!(e.iter().any(|e| e.contains("exactly one of `equals`, `above` and `below`")), "{e:?}");
        let e = errors("  g:\n    steps:\n      - { name: s, model: m1, outputs: { a: x, b: x } }\n");
        assert!(e.iter().any(|e| e.contains("two outputs are renamed to `x`")), "{e:?}");
        let e = errors("  g:\n    steps: []\n");
        assert!(e.iter().any(|e| e.contains("at least one step")), "{e:?}");
    }
}
