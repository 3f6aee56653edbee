"""`switchyard inject` as a user runs it: every golden input's output passes the
Kubernetes schemas, stdin works, output is byte-identical when injected twice,
and refusals or bad YAML exit non-zero naming the problem, writing nothing."""
import yaml

from kube import GOLDEN, KINDS, objects, run_inject, validate


def test_injected_manifests_pass_the_kubernetes_schemas():
    for kind in KINDS:
        code, out, err = run_inject([str(GOLDEN / f"{kind}.in.yaml")])
        assert code == 0, f"{kind}: {err}"
        assert out == (GOLDEN / f"{kind}.out.yaml").read_text(), f"{kind}: the binary differs from the golden file"
        injected = 0
        for obj in objects(yaml.safe_load_all(out)):
            validate(obj)
            injected += "switchyard" in str(obj.get("spec", {}))
        assert injected, f"{kind}: no sidecar in the output"


def test_stdin_and_files_together_and_twice_is_once():
    stdin = (GOLDEN / "job.in.yaml").read_text()
    code, once, err = run_inject(["-", str(GOLDEN / "deployment.in.yaml")], stdin=stdin)
    assert code == 0, err
    assert "job/offline-scoring: injected" in err and "deployment/triton (namespace models): injected" in err
    code, twice, err = run_inject([], stdin=once)
    assert code == 0, err
    assert twice == once
    assert "already injected" in err and ": injected" not in err


def test_a_refusal_names_the_workload_exits_1_and_writes_nothing():
    manifests = (
        (GOLDEN / "job.in.yaml").read_text()
        + "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: clash, namespace: ns}\n"
        "spec:\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata:\n      labels: {a: b}\n"
        "      annotations: {switchyard.io/config: sy}\n    spec:\n      containers:\n"
        "      - {name: app, image: app, ports: [{containerPort: 8100}]}\n"
    )
    code, out, err = run_inject([], stdin=manifests)
    assert code == 1
    assert out == ""
    assert (
        "deployment/clash (namespace ns): refused: container `app` uses port 8100 (containerPort), "
        "which is Switchyard's sy-http port: set switchyard.io/http-port to a free port" in err
    ), err
    assert "1 workload(s) refused; nothing written" in err


def test_bad_yaml_and_missing_files_are_errors():
    code, out, err = run_inject([], stdin="kind: Pod\nmetadata: {name: [\n")
    assert (code, out) == (1, "")
    assert "<stdin>: not valid YAML" in err, err
    code, _, err = run_inject(["/nonexistent/manifest.yaml"])
    assert code == 1 and "/nonexistent/manifest.yaml" in err


def test_bad_defaults_on_the_command_line_are_errors():
    code, _, err = run_inject(["--memory-limit", "lots"], stdin="")
    assert code == 1 and '--memory-limit "lots"' in err, err
