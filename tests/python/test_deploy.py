"""deploy/: the Dockerfile, the Helm chart (both modes, default and
non-default values), the Kustomize manifests and the autoscaling examples.

Every rendered manifest is validated offline against the Kubernetes API
schemas (`kubernetes-validate`, strict: unknown fields are errors) of the
oldest Kubernetes the chart supports and of a current one. CRD kinds
(cert-manager's Certificate/Issuer, prometheus-operator's ServiceMonitor) have
no schema there: they are checked field by field below instead. Then what the
manifests must do is asserted: probes on the right paths and ports, the
security context, rolling updates that keep capacity, a grace period longer
than Switchyard's drain, the ConfigMap mounted as a directory (hot reload),
the NetworkPolicy admitting exactly what the values name, the webhook's TLS
chain.

The chart is rendered by a real Helm (helm 4) and Kustomize by a real kubectl
(its built-in kustomize); scripts/setup.sh installs both into
.switchyard/tools/bin. No Docker engine runs here: the Dockerfile is linted
with hadolint and its contract checked by reading it.

Run: .venv/bin/python -m pytest tests/python/test_deploy.py -q
"""

from harness import REPO, switchyard_bin  # first: sets XDG_CACHE_HOME

import base64  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tomllib  # noqa: E402

import kubernetes_validate  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

DEPLOY = REPO / "deploy"
CHART = DEPLOY / "helm" / "switchyard"
KUSTOMIZE = DEPLOY / "kustomize"
TOOLS = REPO / ".switchyard" / "tools" / "bin"
VENV_BIN = REPO / ".venv" / "bin"

# The chart's kubeVersion floor and a current release.
K8S_VERSIONS = ("1.30.0", "1.35.0")
# Kinds whose schemas are CRDs, not in the Kubernetes API: checked by hand.
CRD_GROUPS = ("cert-manager.io/", "monitoring.coreos.com/")

# Switchyard's drain after SIGTERM: up to lifecycle.drain_timeout (20 s by
# default) for in-flight requests (proxy/src/lifecycle.rs).
DRAIN_S = 20


def tool(name):
    for candidate in (TOOLS / name, VENV_BIN / name):
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found (in {TOOLS}, {VENV_BIN} or PATH): run scripts/setup.sh")
    return found


def run(argv, **kw):
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kw)


def docs_of(text):
    return [d for d in yaml.safe_load_all(text) if d]


def helm_template(values=None, namespace="serving", release="sy", expect_ok=True, tmp_path=None):
    argv = [tool("helm"), "template", release, str(CHART), "--namespace", namespace]
    if values is not None:
        path = tmp_path / f"values-{len(list(tmp_path.iterdir()))}.yaml"
        path.write_text(yaml.safe_dump(values))
        argv += ["--values", str(path)]
    out = run(argv)
    if not expect_ok:
        assert out.returncode != 0, f"helm template succeeded but should not:\n{out.stdout}"
        return out.stderr
    assert out.returncode == 0, f"helm template failed:\n{out.stderr}"
    return docs_of(out.stdout)


def kustomize(path):
    out = run([tool("kubectl"), "kustomize", str(path)])
    assert out.returncode == 0, f"kubectl kustomize {path} failed:\n{out.stderr}"
    return docs_of(out.stdout)


def validate(docs):
    """Every non-CRD document against the strict API schemas; returns the CRD ones."""
    crds = []
    for doc in docs:
        if doc["apiVersion"].startswith(CRD_GROUPS):
            crds.append(doc)
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes {version}: {e}")
    return crds


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def one(docs, kind):
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def container(deployment, name):
    cs = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in cs if c["name"] == name)


def arg(c, flag):
    args = c["args"]
    assert flag in args, f"{flag} missing from {args}"
    return args[args.index(flag) + 1]


def port_number(c, name_or_number):
    if isinstance(name_or_number, int):
        return name_or_number
    return next(p["containerPort"] for p in c["ports"] if p["name"] == name_or_number)


def assert_hardened(deployment, c):
    pod = deployment["spec"]["template"]["spec"]
    psc, csc = pod.get("securityContext", {}), c["securityContext"]
    assert psc.get("runAsNonRoot") is True or csc.get("runAsNonRoot") is True
    uid = csc.get("runAsUser", psc.get("runAsUser"))
    assert isinstance(uid, int) and uid != 0, "a numeric non-root user (runAsNonRoot needs one)"
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["allowPrivilegeEscalation"] is False
    assert csc.get("privileged", False) is False
    assert csc["capabilities"]["drop"] == ["ALL"] and not csc["capabilities"].get("add")
    assert pod.get("automountServiceAccountToken") is False
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    assert strategy["rollingUpdate"]["maxSurge"] not in (0, "0%")
    # One source per volume (the API server refuses more; the schemas do not say).
    for v in pod.get("volumes", []):
        assert len(set(v) - {"name"}) == 1, f"volume with several sources: {v}"
    # No subPath anywhere: a subPath mount never sees ConfigMap/Secret updates.
    for m in c.get("volumeMounts", []):
        assert "subPath" not in m and "subPathExpr" not in m, m


def check_gateway(docs, ports=(8000, 8001, 8002)):
    """What every gateway rendering (Helm or Kustomize) must do; returns the pieces."""
    dep = one(docs, "Deployment")
    c = container(dep, "switchyard")
    pod = dep["spec"]["template"]["spec"]
    assert_hardened(dep, c)
    assert c["args"][0] == "serve"
    http, grpc, metrics = ports
    assert arg(c, "--http-address") == f"0.0.0.0:{http}"
    assert arg(c, "--grpc-address") == f"0.0.0.0:{grpc}"
    assert arg(c, "--metrics-address") == f"0.0.0.0:{metrics}"
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": http, "grpc": grpc, "metrics": metrics}

    # Probes: the data HTTP port, Switchyard's own endpoints.
    for probe, path in (("startupProbe", "/startup"), ("readinessProbe", "/ready"), ("livenessProbe", "/health")):
        get = c[probe]["httpGet"]
        assert get["path"] == path, (probe, get)
        assert port_number(c, get["port"]) == http, (probe, get)
        assert get.get("scheme", "HTTP") == "HTTP"
    # The startup probe leaves time for embedded models to load and warm up
    # before liveness may kill the container.
    s = c["startupProbe"]
    assert s["periodSeconds"] * s["failureThreshold"] >= 60
    assert c["readinessProbe"]["periodSeconds"] <= 10

    # Termination: preStop pause + Switchyard's drain fit in the grace period.
    pause = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    assert pod["terminationGracePeriodSeconds"] > pause + DRAIN_S

    # The config: the whole ConfigMap as a read-only directory at /etc/switchyard.
    config_path = arg(c, "--config")
    assert config_path == "/etc/switchyard/config.yaml"
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    cfg_mount = next(m for m in mounts.values() if m["mountPath"] == "/etc/switchyard")
    assert cfg_mount.get("readOnly") is True
    cfg_volume = volumes[cfg_mount["name"]]
    assert "configMap" in cfg_volume and "items" not in cfg_volume["configMap"]

    # The state file on its own writable volume, not beside the read-only config.
    state_file = arg(c, "--state-file")
    state_mount = next(m for m in mounts.values() if state_file.startswith(m["mountPath"].rstrip("/") + "/"))
    assert not state_mount.get("readOnly")
    state_volume = volumes[state_mount["name"]]
    assert "configMap" not in state_volume and "secret" not in state_volume
    assert any(m["mountPath"] == "/tmp" for m in mounts.values()), "read-only root: /tmp must be a volume"

    # The Service targets the container's named ports.
    svc = one(docs, "Service")
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert dep["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert {p["targetPort"] for p in svc["spec"]["ports"]} == {"http", "grpc", "metrics"}

    # The PDB covers these pods.
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    return dep, c, cfg_volume["configMap"]["name"]


def data_peers(policy):
    """The NetworkPolicy's peers for the data ports and for the metrics port."""
    data, metrics = [], []
    for rule in policy["spec"].get("ingress", []):
        ports = {p["port"] for p in rule.get("ports", [])}
        assert rule.get("from"), f"a rule without `from` admits everyone: {rule}"
        if ports == {"http", "grpc"}:
            data += rule["from"]
        elif ports == {"metrics"}:
            metrics += rule["from"]
        else:
            pytest.fail(f"unexpected NetworkPolicy rule {rule}")
    return data, metrics


def ns_peer(name):
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}


def switchyard_validates(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    out = run([switchyard_bin(), "validate", str(path)])
    assert out.returncode == 0, f"switchyard validate refused the shipped config:\n{out.stdout}{out.stderr}"


# ---------------------------------------------------------------- Dockerfile


def dockerfile_instructions(text):
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        buf += line.rstrip("\\").strip() + " " if line.rstrip().endswith("\\") else line.strip()
        if not line.rstrip().endswith("\\"):
            word, _, rest = buf.partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def test_dockerfile_passes_hadolint(tmp_path):
    hadolint = tool("hadolint")
    out = run([hadolint, "--no-color", "--failure-threshold", "style", str(DEPLOY / "Dockerfile")])
    assert out.returncode == 0, out.stdout + out.stderr
    # The linter really reads the file: a known violation in a copy fails it.
    bad = tmp_path / "Dockerfile"
    bad.write_text((DEPLOY / "Dockerfile").read_text().replace("FROM ${RUNTIME_IMAGE}", "FROM debian:latest"))
    out = run([hadolint, "--no-color", "--failure-threshold", "style", str(bad)])
    assert out.returncode != 0 and "DL3007" in out.stdout, out.stdout


def test_dockerfile_contract():
    text = (DEPLOY / "Dockerfile").read_text()
    ins = dockerfile_instructions(text)
    kinds = [k for k, _ in ins]
    assert "HEALTHCHECK" not in kinds, "Kubernetes probes instead of a HEALTHCHECK"
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for k, a in ins if k == "ARG" and "=" in a}

    # The builder uses the toolchain rust-toolchain.toml pins.
    channel = tomllib.loads((REPO / "rust-toolchain.toml").read_text())["toolchain"]["channel"]
    assert args["RUST_IMAGE"].startswith(f"rust:{channel}-"), args["RUST_IMAGE"]
    # ONNX Runtime is the release the tests run with.
    pin = re.search(r"^onnxruntime==(\S+)$", (REPO / "scripts" / "requirements.txt").read_text(), re.M)
    assert args["ONNXRUNTIME_VERSION"] == pin.group(1)

    froms = [a for k, a in ins if k == "FROM"]
    assert len(froms) >= 3, "multi-stage: builder, ONNX Runtime, runtime"
    runs = " ".join(a for k, a in ins if k == "RUN")
    assert "cargo build --release --locked --bin switchyard" in runs
    assert "cmake" in runs and "protobuf-compiler" in runs
    assert "onnxruntime==${ONNXRUNTIME_VERSION}" in runs

    # The runtime stage: everything after the last FROM.
    last = max(i for i, (k, _) in enumerate(ins) if k == "FROM")
    runtime = ins[last:]
    assert froms[-1] == "${RUNTIME_IMAGE}" and args["RUNTIME_IMAGE"].startswith("gcr.io/distroless/cc-debian12")
    user = [a for k, a in runtime if k == "USER"]
    assert user and re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", user[-1]), f"numeric non-root USER, got {user}"
    expose = " ".join(a for k, a in runtime if k == "EXPOSE").split()
    assert sorted(expose) == ["8000", "8001", "8002"]
    env = " ".join(a for k, a in runtime if k == "ENV")
    lib = re.search(r"ORT_DYLIB_PATH=(\S+)", env).group(1)
    copies = [a for k, a in runtime if k == "COPY"]
    lib_dir = lib.rsplit("/", 1)[0].replace("${ONNXRUNTIME_VERSION}", args["ONNXRUNTIME_VERSION"])
    assert any(c.split()[-1].rstrip("/") == lib_dir for c in copies), (lib, copies)
    assert any(c.split()[-1] == "/usr/local/bin/switchyard" for c in copies)
    assert json.loads(next(a for k, a in runtime if k == "ENTRYPOINT")) == ["/usr/local/bin/switchyard"]
    assert json.loads(next(a for k, a in runtime if k == "CMD")) == [
        "serve",
        "--config",
        "/etc/switchyard/config.yaml",
    ]

    ignored = (REPO / ".dockerignore").read_text().split()
    for path in ("target/", ".venv/", ".switchyard/", ".git/"):
        assert path in ignored, f".dockerignore must leave out {path}"


# ---------------------------------------------------------------- Helm: gateway


def test_helm_lint():
    for mode in ("gateway", "injector"):
        out = run([tool("helm"), "lint", "--strict", str(CHART), "--set", f"mode={mode}"])
        assert out.returncode == 0, out.stdout + out.stderr


def test_helm_gateway_defaults(tmp_path):
    docs = helm_template(tmp_path=tmp_path)
    assert not validate(docs), "no CRD kinds by default"
    assert {d["kind"] for d in docs} == {
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }
    assert all(d["metadata"].get("namespace") == "serving" for d in docs)
    dep, c, cm_name = check_gateway(docs)
    assert dep["spec"]["replicas"] == 2
    # Hot reload, not restarts, by default: no config checksum on the pods.
    assert not any(k.startswith("checksum/") for k in dep["spec"]["template"]["metadata"].get("annotations", {}))
    assert not any(e["name"] == "SWITCHYARD_CONTROL_TOKEN" for e in c["env"])
    cm = one(docs, "ConfigMap")
    assert cm["metadata"]["name"] == cm_name and list(cm["data"]) == ["config.yaml"]
    switchyard_validates(tmp_path, cm["data"]["config.yaml"])

    # Nobody is named: nobody reaches the data ports; Prometheus' namespace
    # reaches the metrics port.
    data, metrics = data_peers(one(docs, "NetworkPolicy"))
    assert data == []
    assert metrics == [ns_peer("monitoring")]
    assert one(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]


def test_helm_gateway_non_default_values(tmp_path):
    values = {
        "image": {"repository": "registry.example.com/switchyard", "tag": "1.2.3"},
        "gateway": {
            "ports": {"http": 9000, "grpc": 9001, "metrics": 9002},
            "config": yaml.safe_dump(
                {
                    "backends": {"mlserver": {"kind": "v2-http", "endpoints": ["http://mlserver.models:8080"]}},
                    "models": {"fraud": {"variants": [{"name": "v1", "backend": "mlserver"}]}},
                }
            ),
            "rollOnConfigChange": True,
            "controlToken": {"existingSecret": "switchyard-control", "key": "bearer"},
            "state": {
                "mountPath": "/state",
                "fileName": "control.json",
                "existingClaim": "switchyard-state",
            },
            "preStopSleepSeconds": 10,
            "terminationGracePeriodSeconds": 45,
            "autoscaling": {
                "enabled": True,
                "minReplicas": 3,
                "maxReplicas": 30,
                "targetMemoryUtilizationPercentage": 80,
                "podsMetrics": [
                    {"name": "switchyard_requests_per_second", "averageValue": "250"},
                    {
                        "name": "switchyard_model_requests_in_flight",
                        "averageValue": "16",
                        "selector": {"matchLabels": {"model": "fraud"}},
                    },
                ],
            },
            "networkPolicy": {
                "allowedNamespaces": ["apps", "batch"],
                "allowedPodLabels": {"role": "inference-client"},
                "metricsNamespaces": ["observability"],
            },
            "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus"}},
            "podDisruptionBudget": {"maxUnavailable": "25%"},
        },
    }
    docs = helm_template(values, namespace="ml", tmp_path=tmp_path)
    crds = validate(docs)
    dep, c, _ = check_gateway(docs, ports=(9000, 9001, 9002))
    assert c["image"] == "registry.example.com/switchyard:1.2.3"
    assert "replicas" not in dep["spec"], "the HPA owns the replica count"
    assert "checksum/config" in dep["spec"]["template"]["metadata"]["annotations"]
    token = next(e for e in c["env"] if e["name"] == "SWITCHYARD_CONTROL_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "switchyard-control", "key": "bearer"}
    assert arg(c, "--state-file") == "/state/control.json"
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["state"] == {"name": "state", "persistentVolumeClaim": {"claimName": "switchyard-state"}}
    assert c["lifecycle"]["preStop"]["sleep"]["seconds"] == 10
    rendered = one(docs, "ConfigMap")["data"]["config.yaml"]
    assert rendered == values["gateway"]["config"], "the given config whole, no default merged in"
    switchyard_validates(tmp_path, rendered)

    svc = one(docs, "Service")
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}

    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": dep["metadata"]["name"]}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 30)
    resources = {
        m["resource"]["name"]: m["resource"]["target"]["averageUtilization"]
        for m in hpa["spec"]["metrics"]
        if m["type"] == "Resource"
    }
    assert resources == {"cpu": 70, "memory": 80}
    pods = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert [(p["metric"]["name"], p["target"]["averageValue"]) for p in pods] == [
        ("switchyard_requests_per_second", "250"),
        ("switchyard_model_requests_in_flight", "16"),
    ]
    assert pods[1]["metric"]["selector"] == {"matchLabels": {"model": "fraud"}}

    data, metrics = data_peers(one(docs, "NetworkPolicy"))
    assert data == [ns_peer("apps"), ns_peer("batch"), {"podSelector": {"matchLabels": {"role": "inference-client"}}}]
    assert metrics == [ns_peer("observability")]
    assert one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == "25%"

    (sm,) = crds
    assert sm["kind"] == "ServiceMonitor" and sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["ml"]}
    assert [(e["port"], e["path"]) for e in sm["spec"]["endpoints"]] == [("metrics", "/metrics")]


def test_helm_gateway_existing_configmap_and_no_policy(tmp_path):
    docs = helm_template(
        {
            "gateway": {
                "existingConfigMap": "my-switchyard",
                "networkPolicy": {"enabled": False},
                "podDisruptionBudget": {"enabled": False},
                "preStopSleepSeconds": 0,
                "replicaCount": 1,
            }
        },
        tmp_path=tmp_path,
    )
    validate(docs)
    assert not by_kind(docs, "ConfigMap") and not by_kind(docs, "NetworkPolicy") and not by_kind(docs, "PodDisruptionBudget")
    dep = one(docs, "Deployment")
    c = container(dep, "switchyard")
    assert "lifecycle" not in c
    assert any(v.get("configMap", {}).get("name") == "my-switchyard" for v in dep["spec"]["template"]["spec"]["volumes"])


@pytest.mark.parametrize(
    "values, message",
    [
        # values.schema.json
        ({"mode": "sidecar"}, "at '/mode': value must be one of 'gateway', 'injector'"),
        ({"gateway": {"replicas": 3}}, "at '/gateway': additional properties 'replicas' not allowed"),
        ({"gateway": {"config": {"models": {}}}}, "at '/gateway/config'"),
        ({"gateway": {"ports": {"http": 70000}}}, "at '/gateway/ports/http'"),
        ({"mode": "injector", "injector": {"tls": {"mode": "vault"}}}, "at '/injector/tls/mode'"),
        ({"mode": "injector", "injector": {"webhook": {"failurePolicy": "Maybe"}}}, "at '/injector/webhook/failurePolicy'"),
        # the templates' own checks
        ({"gateway": {"terminationGracePeriodSeconds": 15}}, "must exceed preStopSleepSeconds + lifecycle.drain_timeout (25 s)"),
        (
            {"gateway": {"config": "lifecycle:\n  drain_timeout: 1m\n", "terminationGracePeriodSeconds": 60}},
            "must exceed preStopSleepSeconds + lifecycle.drain_timeout (65 s)",
        ),
        ({"gateway": {"config": "lifecycle:\n  drain_timeout: soon\n"}}, "lifecycle.drain_timeout `soon` is not a duration"),
        ({"gateway": {"preStopSleepSeconds": 0, "terminationGracePeriodSeconds": 10}}, "must exceed Switchyard's drain"),
        ({"gateway": {"autoscaling": {"enabled": True, "targetCPUUtilizationPercentage": None}}}, "needs at least one of"),
        ({"gateway": {"config": "models: [unclosed\n"}}, "gateway.config is not valid YAML"),
    ],
)
def test_helm_refuses_bad_values(tmp_path, values, message):
    err = helm_template(values, expect_ok=False, tmp_path=tmp_path)
    assert message in err, err


# ---------------------------------------------------------------- Helm: injector


def check_webhook(mwc, svc, namespace, failure_policy="Ignore"):
    hooks = {h["name"]: h for h in mwc["webhooks"]}
    assert set(hooks) == {"namespace.inject.switchyard.io", "pod.inject.switchyard.io"}
    for h in hooks.values():
        assert h["sideEffects"] == "None"
        assert h["admissionReviewVersions"] == ["v1"]
        assert h["rules"] == [
            {"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced"}
        ]
        ref = h["clientConfig"]["service"]
        assert (ref["name"], ref["namespace"]) == (svc["metadata"]["name"], namespace)
        assert ref["port"] in [p["port"] for p in svc["spec"]["ports"]]
        exprs = {e["key"]: e for e in h["namespaceSelector"]["matchExpressions"]}
        excluded = exprs["kubernetes.io/metadata.name"]
        assert excluded["operator"] == "NotIn"
        assert {"kube-system", namespace} <= set(excluded["values"])
    ns_hook, pod_hook = hooks["namespace.inject.switchyard.io"], hooks["pod.inject.switchyard.io"]
    assert ns_hook["clientConfig"]["service"]["path"] == "/inject-namespace"
    assert pod_hook["clientConfig"]["service"]["path"] == "/inject"
    label = {e["key"]: e for e in ns_hook["namespaceSelector"]["matchExpressions"]}["switchyard.io/inject"]
    assert (label["operator"], label["values"]) == ("In", ["enabled"])
    label = {e["key"]: e for e in pod_hook["namespaceSelector"]["matchExpressions"]}["switchyard.io/inject"]
    assert (label["operator"], label["values"]) == ("NotIn", ["enabled"]), "a pod is never sent to both"
    assert pod_hook["failurePolicy"] == failure_policy
    return hooks


def check_injector(docs, namespace):
    dep = one(docs, "Deployment")
    c = container(dep, "injector")
    assert_hardened(dep, c)
    assert c["args"][0] == "injector"
    listen_port = int(arg(c, "--listen").rsplit(":", 1)[1])
    assert port_number(c, "webhook") == listen_port
    for probe in ("readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        assert (get["scheme"], get["path"], port_number(c, get["port"])) == ("HTTPS", "/health", listen_port)
    # The certificate and key come from the mounted TLS Secret.
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    for flag, key in (("--tls-cert", "tls.crt"), ("--tls-key", "tls.key")):
        path = arg(c, flag)
        mount = next(m for m in mounts.values() if path == f"{m['mountPath'].rstrip('/')}/{key}")
        assert mount["readOnly"] is True
    secret_name = volumes[mount["name"]]["secret"]["secretName"]
    svc = one(docs, "Service")
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["webhook"]
    return dep, c, svc, secret_name


def test_helm_injector_self_signed(tmp_path):
    ns = "switchyard-system"
    docs = helm_template({"mode": "injector"}, namespace=ns, release="inj", tmp_path=tmp_path)
    assert not validate(docs)
    assert {d["kind"] for d in docs} == {
        "ServiceAccount",
        "Secret",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "MutatingWebhookConfiguration",
    }
    dep, c, svc, secret_name = check_injector(docs, ns)
    assert arg(c, "--image") == c["image"]
    mwc = one(docs, "MutatingWebhookConfiguration")
    hooks = check_webhook(mwc, svc, ns)
    assert hooks["namespace.inject.switchyard.io"]["failurePolicy"] == "Fail"

    # The generated chain: the webhook's caBundle verifies the served certificate
    # for the Service's DNS name.
    secret = one(docs, "Secret")
    assert secret["metadata"]["name"] == secret_name and secret["type"] == "kubernetes.io/tls"
    ca = base64.b64decode(secret["data"]["ca.crt"])
    for h in hooks.values():
        assert base64.b64decode(h["clientConfig"]["caBundle"]) == ca
    (tmp_path / "ca.pem").write_bytes(ca)
    (tmp_path / "tls.pem").write_bytes(base64.b64decode(secret["data"]["tls.crt"]))
    (tmp_path / "key.pem").write_bytes(base64.b64decode(secret["data"]["tls.key"]))
    host = f"{svc['metadata']['name']}.{ns}.svc"
    def verify(name):
        return run(["openssl", "verify", "-CAfile", str(tmp_path / "ca.pem"), "-verify_hostname", name, str(tmp_path / "tls.pem")])

    out = verify(host)
    assert out.returncode == 0, out.stdout + out.stderr
    out = verify("evil.example.com")
    assert out.returncode != 0, "the certificate must not be valid for other names"
    cert_pub = run(["openssl", "x509", "-in", str(tmp_path / "tls.pem"), "-noout", "-pubkey"]).stdout
    key_pub = run(["openssl", "pkey", "-in", str(tmp_path / "key.pem"), "-pubout"]).stdout
    assert cert_pub and cert_pub == key_pub, "tls.key belongs to tls.crt"
    # A regenerated certificate rolls the pods.
    assert "checksum/tls" in dep["spec"]["template"]["metadata"]["annotations"]

    # The API server's address cannot be selected: only the webhook port is open.
    (rule,) = one(docs, "NetworkPolicy")["spec"]["ingress"]
    assert rule["ports"] == [{"port": "webhook", "protocol": "TCP"}]


def test_helm_injector_cert_manager(tmp_path):
    ns = "platform"
    values = {
        "mode": "injector",
        "image": {"tag": "2.0.0"},
        "injector": {
            "sidecarImage": "registry.example.com/switchyard:2.0.0",
            "extraArgs": ["--config-map", "switchyard", "--memory-limit", "2Gi"],
            "port": 9443,
            "webhook": {"failurePolicy": "Fail", "objectSelector": {"matchLabels": {"switchyard.io/candidate": "true"}}},
            "tls": {"mode": "certManager", "certManager": {"issuerRef": {"name": "platform-ca", "kind": "ClusterIssuer"}}},
        },
    }
    docs = helm_template(values, namespace=ns, release="inj", tmp_path=tmp_path)
    crds = validate(docs)
    assert not by_kind(docs, "Secret"), "cert-manager writes the Secret"
    dep, c, svc, secret_name = check_injector(docs, ns)
    assert arg(c, "--listen") == "0.0.0.0:9443"
    assert arg(c, "--image") == "registry.example.com/switchyard:2.0.0"
    assert c["args"][-4:] == ["--config-map", "switchyard", "--memory-limit", "2Gi"]
    mwc = one(docs, "MutatingWebhookConfiguration")
    hooks = check_webhook(mwc, svc, ns, failure_policy="Fail")
    assert all("caBundle" not in h["clientConfig"] for h in hooks.values())
    assert hooks["pod.inject.switchyard.io"]["objectSelector"] == {"matchLabels": {"switchyard.io/candidate": "true"}}

    assert [d["kind"] for d in crds] == ["Certificate"], "an existing issuer: no Issuer created"
    cert = crds[0]
    assert mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == f"{ns}/{cert['metadata']['name']}"
    assert cert["metadata"]["namespace"] == ns
    assert cert["spec"]["secretName"] == secret_name
    assert f"{svc['metadata']['name']}.{ns}.svc" in cert["spec"]["dnsNames"]
    assert cert["spec"]["issuerRef"] == {"name": "platform-ca", "kind": "ClusterIssuer"}

    # Without an issuer the chart makes a self-signed one.
    values = {"mode": "injector", "injector": {"tls": {"mode": "certManager"}}}
    docs = helm_template(values, namespace=ns, release="inj", tmp_path=tmp_path)
    crds = {d["kind"]: d for d in validate(docs)}
    assert crds["Issuer"]["spec"] == {"selfSigned": {}}
    assert crds["Certificate"]["spec"]["issuerRef"] == {"name": crds["Issuer"]["metadata"]["name"], "kind": "Issuer"}


# ---------------------------------------------------------------- Kustomize


def test_kustomize_gateway_base(tmp_path):
    docs = kustomize(KUSTOMIZE / "gateway")
    assert not validate(docs)
    _, _, cm_name = check_gateway(docs)
    cm = one(docs, "ConfigMap")
    assert cm["metadata"]["name"] == cm_name, "a stable name (no hash suffix), so edits hot-reload"
    assert cm["data"]["config.yaml"] == (KUSTOMIZE / "gateway" / "config.yaml").read_text()
    switchyard_validates(tmp_path, cm["data"]["config.yaml"])
    data, metrics = data_peers(one(docs, "NetworkPolicy"))
    assert data == [{"podSelector": {"matchLabels": {"switchyard.io/client": "true"}}}]
    assert metrics == [ns_peer("monitoring")]


def test_kustomize_gateway_matches_the_chart_defaults(tmp_path):
    """The two hand-written gateways do not drift apart: same container, pod
    settings and config as the chart renders with its defaults."""
    chart = helm_template(tmp_path=tmp_path)
    base = kustomize(KUSTOMIZE / "gateway")
    hc, kc = (container(one(d, "Deployment"), "switchyard") for d in (chart, base))
    for field in ("args", "ports", "startupProbe", "readinessProbe", "livenessProbe", "lifecycle", "resources", "securityContext"):
        assert hc[field] == kc[field], field
    assert {e["name"]: e.get("value") for e in hc["env"]} == {e["name"]: e.get("value") for e in kc["env"]}
    assert [m["mountPath"] for m in hc["volumeMounts"]] == [m["mountPath"] for m in kc["volumeMounts"]]
    hp, kp = (one(d, "Deployment")["spec"]["template"]["spec"] for d in (chart, base))
    for field in ("securityContext", "terminationGracePeriodSeconds", "automountServiceAccountToken"):
        assert hp[field] == kp[field], field
    assert [v.get("emptyDir") for v in hp["volumes"]] == [v.get("emptyDir") for v in kp["volumes"]]
    hs, ks = (one(d, "Service")["spec"]["ports"] for d in (chart, base))
    assert hs == ks
    assert yaml.safe_load(one(chart, "ConfigMap")["data"]["config.yaml"]) == yaml.safe_load(
        one(base, "ConfigMap")["data"]["config.yaml"]
    )


def test_kustomize_production_overlay():
    docs = kustomize(KUSTOMIZE / "overlays" / "production")
    assert not validate(docs)
    assert all(d["metadata"]["namespace"] == "serving" for d in docs)
    dep, c, _ = check_gateway(docs)
    assert "replicas" not in dep["spec"], "the HPA owns the replica count"
    assert c["image"] == "registry.example.com/switchyard:0.1.0"
    assert any(e["name"] == "SWITCHYARD_CONTROL_TOKEN" for e in c["env"])
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    data, _ = data_peers(one(docs, "NetworkPolicy"))
    assert ns_peer("apps") in data and {"podSelector": {"matchLabels": {"switchyard.io/client": "true"}}} in data


def test_kustomize_injector():
    docs = kustomize(KUSTOMIZE / "injector")
    crds = {d["kind"]: d for d in validate(docs)}
    ns = one(docs, "Namespace")["metadata"]["name"]
    assert all(d["metadata"].get("namespace") == ns for d in docs if d["kind"] not in ("Namespace", "MutatingWebhookConfiguration"))
    dep, c, svc, secret_name = check_injector(docs, ns)
    mwc = one(docs, "MutatingWebhookConfiguration")
    check_webhook(mwc, svc, ns)
    cert = crds["Certificate"]
    assert mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == f"{ns}/{cert['metadata']['name']}"
    assert cert["spec"]["secretName"] == secret_name
    assert f"{svc['metadata']['name']}.{ns}.svc" in cert["spec"]["dnsNames"]
    assert cert["spec"]["issuerRef"] == {"name": crds["Issuer"]["metadata"]["name"], "kind": "Issuer"}
    assert arg(c, "--image").rsplit(":", 1)[1] == c["image"].rsplit(":", 1)[1], "sidecar and injector in step"


# ---------------------------------------------------------------- autoscaling


def adapter_metric_names():
    rules = yaml.safe_load((DEPLOY / "autoscaling" / "prometheus-adapter-rules.yaml").read_text())
    return ({r["name"]["as"] for r in rules["rules"]}, {r["name"]["as"] for r in rules["externalRules"]})


def test_autoscaling_hpa_examples_use_the_adapter_metrics():
    docs = docs_of((DEPLOY / "autoscaling" / "hpa.yaml").read_text())
    assert not validate(docs)
    custom, external = adapter_metric_names()
    seen = set()
    for hpa in docs:
        kinds = {m["type"] for m in hpa["spec"]["metrics"]}
        assert "Resource" in kinds, "CPU/memory besides Switchyard's metrics"
        for m in hpa["spec"]["metrics"]:
            if m["type"] == "Pods":
                assert m["pods"]["metric"]["name"] in custom
                seen.add(m["pods"]["metric"]["name"])
            elif m["type"] == "External":
                assert m["external"]["metric"]["name"] in external
                seen.add(m["external"]["metric"]["name"])
    assert seen == custom | external, "every adapter metric has an example"
    # The chart's and the overlay's HPAs name adapter metrics too.
    prod = one(kustomize(KUSTOMIZE / "overlays" / "production"), "HorizontalPodAutoscaler")
    assert {m["pods"]["metric"]["name"] for m in prod["spec"]["metrics"] if m["type"] == "Pods"} <= custom
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    commented = re.findall(r"#\s+- name: (\S+)", (CHART / "values.yaml").read_text())
    assert commented and set(commented) <= custom and values["gateway"]["autoscaling"]["podsMetrics"] == []


# ---------------------------------------------------------------- the gateway pod, on loopback


def kubelet_configmap(directory, data, generation):
    """A ConfigMap volume as the kubelet lays it out: the files in a timestamped
    directory, `..data` pointing at it, each key a symlink through `..data`.
    A later generation swaps `..data` atomically (rename over the old link)."""
    directory.mkdir(parents=True, exist_ok=True)
    stamped = directory / f"..2026_11_30_{generation:02d}.000000000"
    stamped.mkdir()
    for key, text in data.items():
        (stamped / key).write_text(text)
    tmp_link = directory / "..data_tmp"
    os.symlink(stamped.name, tmp_link)
    os.replace(tmp_link, directory / "..data")
    for key in data:
        if not (directory / key).is_symlink():
            os.symlink(f"..data/{key}", directory / key)


def test_helm_gateway_container_runs_as_rendered(tmp_path):
    """The chart's container, command line, environment and mounts as rendered,
    run as a process on loopback (paths and ports mapped): it starts, answers
    its probes and serves, hot-reloads a `..data` swap of its ConfigMap
    directory, keeps API state in the state volume, and drains on SIGTERM
    within the grace period."""
    from harness import POLL_S, Proc, free_port
    import requests
    import signal
    import time

    control = free_port()
    models_dir = "/models"
    config = {
        "listeners": {"control": {"address": f"127.0.0.1:{control}"}},
        "backends": {"local": {"kind": "onnx", "repository": models_dir, "version_policy": {"all": True}}},
        "models": {
            "mlp": {
                "variants": [
                    {"name": "v1", "backend": "local", "version": 1, "weight": 50},
                    {"name": "v2", "backend": "local", "version": 2, "weight": 50},
                ]
            }
        },
    }
    values = {
        "gateway": {
            "config": yaml.safe_dump(config),
            "extraVolumes": [{"name": "models", "persistentVolumeClaim": {"claimName": "models"}}],
            "extraVolumeMounts": [{"name": "models", "mountPath": models_dir, "readOnly": True}],
        }
    }
    docs = helm_template(values, tmp_path=tmp_path)
    validate(docs)
    dep, c, _ = check_gateway(docs)
    grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    cm = one(docs, "ConfigMap")

    # Map the pod's paths and ports onto this machine.
    root = tmp_path / "pod"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    paths = {p: str(root / p.strip("/").replace("/", "_")) for p in mounts}
    paths[models_dir] = str(REPO / "examples" / "models")
    for p in mounts:
        if p != models_dir:
            os.makedirs(paths[p], exist_ok=True)
    ports = {name: free_port() for name in ("http", "grpc", "metrics")}
    by_number = {p["containerPort"]: p["name"] for p in c["ports"]}

    def mapped(a):
        m = re.fullmatch(r"0\.0\.0\.0:(\d+)", a)
        if m:
            return f"127.0.0.1:{ports[by_number[int(m.group(1))]]}"
        for p in sorted(paths, key=len, reverse=True):
            if a == p or a.startswith(p.rstrip("/") + "/"):
                return paths[p] + a[len(p):]
        return a

    config_text = cm["data"]["config.yaml"].replace(models_dir, paths[models_dir])
    config_dir = root / "etc_switchyard"
    kubelet_configmap(config_dir, {"config.yaml": config_text}, 1)
    argv = [switchyard_bin()] + [mapped(a) for a in c["args"]]
    env = dict(os.environ)
    env.pop("SWITCHYARD_CONTROL_TOKEN", None)
    env.update({e["name"]: e["value"] for e in c["env"] if "value" in e})
    sy = Proc("switchyard (gateway pod)", argv, tmp_path / "gateway.log", env=env, cwd=str(root))
    try:
        http = f"http://127.0.0.1:{ports['http']}"
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            sy.wait_until_ok(http + c[probe]["httpGet"]["path"], 60)
        sy.wait_until_ok(f"http://127.0.0.1:{ports['metrics']}/metrics", 10)
        body = {"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]}
        r = requests.post(f"{http}/v2/models/mlp/infer", json=body, timeout=10)
        assert r.status_code == 200, r.text
        assert json.loads(sy.log().splitlines()[0]), "JSON logs (SWITCHYARD_LOG_FORMAT from the chart)"

        # A control API change lands in the state volume, not beside the config.
        r = requests.post(f"http://127.0.0.1:{control}/ml/models/mlp/traffic", json={"weights": {"v1": 100, "v2": 0}}, timeout=10)
        assert r.status_code == 200, r.text
        state = mapped(arg(c, "--state-file"))
        assert os.path.getsize(state) > 0
        assert not any(n.endswith(".state.json") for n in os.listdir(config_dir))

        # The kubelet's ConfigMap update: a new generation and a `..data` swap.
        # It adds model mlp_heavy (in the repository, not routed until then).
        assert requests.get(f"{http}/v2/models/mlp_heavy", timeout=10).status_code == 404
        config2 = yaml.safe_load(config_text)
        config2["models"]["mlp_heavy"] = {"variants": [{"name": "only", "backend": "local"}]}
        kubelet_configmap(config_dir, {"config.yaml": yaml.safe_dump(config2)}, 2)
        deadline = time.monotonic() + 30
        while requests.get(f"{http}/v2/models/mlp_heavy", timeout=10).status_code != 200:
            assert sy.p.poll() is None, sy.log()
            assert time.monotonic() < deadline, f"the ..data swap was not reloaded:\n{sy.log()}"
            time.sleep(POLL_S)

        # SIGTERM (after the preStop pause, which the kubelet runs): a clean
        # exit before the kubelet's SIGKILL would come.
        os.kill(sy.p.pid, signal.SIGTERM)
        pause = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert sy.p.wait(timeout=grace - pause) == 0, sy.log()
    finally:
        sy.stop()


def https_request(port, host, ca_file, method, path, body=None):
    """One HTTPS request to 127.0.0.1:port, verified against ca_file for `host`
    (SNI and name check as the API server does): (status, parsed body or text)."""
    import http.client
    import socket
    import ssl

    ctx = ssl.create_default_context(cafile=str(ca_file))

    class Conn(http.client.HTTPSConnection):
        def connect(self):
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            self.sock = ctx.wrap_socket(raw, server_hostname=host)

    conn = Conn(host, port, context=ctx, timeout=10)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=payload, headers={"Content-Type": "application/json"} if payload else {})
        resp = conn.getresponse()
        text = resp.read().decode()
        try:
            return resp.status, json.loads(text)
        except json.JSONDecodeError:
            return resp.status, text
    finally:
        conn.close()


def admission_review(uid, annotations):
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "model", "namespace": "models", "annotations": annotations},
        "spec": {"containers": [{"name": "server", "image": "nvcr.io/nvidia/tritonserver", "ports": [{"containerPort": 8000}]}]},
    }
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "models",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "dryRun": False,
        },
    }


def test_helm_injector_container_runs_as_rendered(tmp_path):
    """The chart's injector container, command line and generated TLS Secret as
    rendered, run as a process on loopback: its probes answer over HTTPS, and
    the webhook paths the MutatingWebhookConfiguration names answer
    AdmissionReviews over a TLS connection verified the way the API server
    verifies it (the caBundle, the Service's DNS name)."""
    from harness import POLL_S, Proc, free_port
    import time

    help_text = run([switchyard_bin(), "--help"]).stdout
    if not re.search(r"^\s+injector\s", help_text, re.M):
        pytest.skip("this switchyard binary has no `injector` subcommand (issue 12's injector is built on another branch)")

    ns = "switchyard-system"
    docs = helm_template({"mode": "injector"}, namespace=ns, release="inj", tmp_path=tmp_path)
    dep, c, svc, secret_name = check_injector(docs, ns)
    secret = one(docs, "Secret")
    mwc = one(docs, "MutatingWebhookConfiguration")
    host = f"{svc['metadata']['name']}.{ns}.svc"

    # The Secret volume, as the kubelet would fill it.
    mount = next(m for m in c["volumeMounts"] if arg(c, "--tls-cert").startswith(m["mountPath"]))
    secret_dir = tmp_path / "tls"
    secret_dir.mkdir()
    for key, b64 in secret["data"].items():
        (secret_dir / key).write_bytes(base64.b64decode(b64))
    ca_file = tmp_path / "ca-bundle.pem"
    ca_file.write_bytes(base64.b64decode(mwc["webhooks"][0]["clientConfig"]["caBundle"]))

    port = free_port()

    def mapped(a):
        if re.fullmatch(r"0\.0\.0\.0:\d+", a):
            return f"127.0.0.1:{port}"
        if a.startswith(mount["mountPath"].rstrip("/") + "/"):
            return str(secret_dir / a[len(mount["mountPath"].rstrip("/")) + 1 :])
        return a

    argv = [switchyard_bin()] + [mapped(a) for a in c["args"]]
    env = dict(os.environ, **{e["name"]: e["value"] for e in c["env"] if "value" in e})
    proc = Proc("switchyard injector", argv, tmp_path / "injector.log", env=env)
    try:
        probe = c["readinessProbe"]["httpGet"]
        deadline = time.monotonic() + 30
        while True:
            assert proc.p.poll() is None, proc.log()
            try:
                status, _ = https_request(port, host, ca_file, "GET", probe["path"])
                if status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"the injector did not answer {probe['path']}:\n{proc.log()}"
            time.sleep(POLL_S)
        assert https_request(port, host, ca_file, "GET", c["livenessProbe"]["httpGet"]["path"])[0] == 200

        hooks = {h["name"]: h["clientConfig"]["service"]["path"] for h in mwc["webhooks"]}
        # Outside labelled namespaces: a pod that does not opt in is let through untouched.
        status, review = https_request(port, host, ca_file, "POST", hooks["pod.inject.switchyard.io"], admission_review("u-1", {}))
        assert status == 200, review
        assert review["response"]["uid"] == "u-1" and review["response"]["allowed"] is True
        assert "patch" not in review["response"]
        # In a labelled namespace: a pod that opts out is let through untouched.
        opted_out = admission_review("u-2", {"switchyard.io/inject": "disabled"})
        status, review = https_request(port, host, ca_file, "POST", hooks["namespace.inject.switchyard.io"], opted_out)
        assert status == 200, review
        assert review["response"]["uid"] == "u-2" and review["response"]["allowed"] is True
        assert "patch" not in review["response"]
        # A client that trusts another CA is refused the handshake.
        other = tmp_path / "other-ca.pem"
        gen = run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
            + ["-subj", "/CN=other", "-days", "1", "-keyout", str(tmp_path / "other.key"), "-out", str(other)]
        )
        assert gen.returncode == 0, gen.stderr
        with pytest.raises(OSError):
            https_request(port, host, other, "GET", probe["path"])
    finally:
        proc.stop()
