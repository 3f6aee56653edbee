//! Golden files for `switchyard inject`: each `tests/inject/golden/NAME.in.yaml`
//! injected must equal `NAME.out.yaml` byte for byte, and injecting the output
//! again must change nothing. `UPDATE_GOLDEN=1 cargo test -p switchyard-inject
//! --test golden` rewrites the `.out.yaml` files (review the diff).

use std::path::PathBuf;

use switchyard_inject::{manifest, Defaults};

const KINDS: [&str; 6] = ["deployment", "statefulset", "daemonset", "job", "cronjob", "pod"];

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/inject/golden")
}

/// Injects like the CLI: the rendered YAML and the summary lines, or the refusals.
fn inject(text: &str) -> Result<(String, Vec<String>), Vec<String>> {
    let mut docs = manifest::parse(text).map_err(|e| vec![e])?;
    let report = manifest::inject_all(&mut docs, &Defaults::default());
    if !report.refusals.is_empty() {
        return Err(report.refusals);
    }
    Ok((manifest::render(&docs).unwrap(), report.lines))
}

#[test]
fn every_kind_matches_its_golden_file_and_injecting_twice_changes_nothing() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    for kind in KINDS {
        let input = std::fs::read_to_string(dir().join(format!("{kind}.in.yaml"))).unwrap();
        let (out, lines) = inject(&input).unwrap_or_else(|e| panic!("{kind}: refused: {e:?}"));
        assert!(lines.iter().any(|l| l.contains(": injected")), "{kind}: nothing injected: {lines:?}");
        let golden = dir().join(format!("{kind}.out.yaml"));
        if update {
            std::fs::write(&golden, &out).unwrap();
        }
        let expected = std::fs::read_to_string(&golden).unwrap_or_default();
        assert!(out == expected, "{kind}: output differs from {}:\n{out}", golden.display());

        let (again, lines) = inject(&out).unwrap_or_else(|e| panic!("{kind}: second injection refused: {e:?}"));
        assert_eq!(again, out, "{kind}: a second injection changed the output");
        assert!(lines.iter().all(|l| !l.contains(": injected")), "{kind}: injected twice: {lines:?}");
    }
}

#[test]
fn refusals_name_the_workload_and_the_reason() {
    let cases = [
        (
            "kind: Deployment\nmetadata: {name: web}\nspec:\n  template:\n    spec:\n      containers: [{name: web, image: nginx}]\n",
            "deployment/web: refused: switchyard.io/config is missing",
        ),
        (
            "kind: Pod\nmetadata: {name: p, annotations: {switchyard.io/config: sy}}\nspec:\n  containers:\n  - {name: m, image: m, ports: [{containerPort: 8101}]}\n",
            "pod/p: refused: container `m` uses port 8101 (containerPort), which is Switchyard's sy-grpc port: set switchyard.io/grpc-port to a free port",
        ),
        (
            "kind: StatefulSet\nmetadata: {name: s, namespace: ns}\nspec:\n  template:\n    metadata: {annotations: {switchyard.io/config: sy}}\n    spec:\n      containers: [{name: switchyard, image: mine}]\n",
            "statefulset/s (namespace ns): refused: the pod already has a container named `switchyard` (in container) that switchyard did not inject",
        ),
        (
            "kind: Job\nmetadata: {name: j}\nspec:\n  template:\n    metadata: {annotations: {switchyard.io/config: sy, switchyard.io/http-port: '0'}}\n    spec:\n      containers: [{name: j, image: j}]\n",
            "job/j: refused: switchyard.io/http-port: \"0\" is not a port (1-65535)",
        ),
    ];
    for (input, expected) in cases {
        let refusals = inject(input).expect_err(expected);
        assert!(refusals.iter().any(|r| r.starts_with(expected)), "{expected:?} not in {refusals:?}");
    }
}
