"""Kubernetes-side helpers of the injection tests: `switchyard inject` run as a
user runs it, offline schema validation (kubernetes-validate's bundled schemas),
and the Pod a workload controller would create from a pod template."""
import copy
import subprocess

import kubernetes_validate
import yaml

from harness import REPO, switchyard_bin

GOLDEN = REPO / "tests" / "inject" / "golden"
KINDS = ["deployment", "statefulset", "daemonset", "job", "cronjob", "pod"]
# A Kubernetes version whose schemas kubernetes-validate ships, with native sidecars (1.29+).
K8S_VERSION = "1.30.0"


def run_inject(args, stdin=None):
    """`switchyard inject ARGS`: (exit code, stdout, stderr)."""
    p = subprocess.run(
        [switchyard_bin(), "inject", *args], input=stdin, capture_output=True, text=True, timeout=60
    )
    return p.returncode, p.stdout, p.stderr


def objects(docs):
    """Every object of the documents, a `kind: List`'s items included."""
    for d in docs:
        if d and d.get("kind") == "List":
            yield from objects(d.get("items") or [])
        elif d:
            yield d


def validate(obj):
    """Strict validation against the Kubernetes API schemas; fails the test with the reason."""
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        raise AssertionError(f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}: {e.message} at {list(e.path)}")


def template_of(obj):
    """(inherited annotations, pod template) of a workload; (None, the pod) for a Pod."""
    kind = obj["kind"]
    if kind == "Pod":
        return {}, obj
    if kind == "CronJob":
        inherited = dict(obj["metadata"].get("annotations") or {})
        inherited.update(obj["spec"]["jobTemplate"].get("metadata", {}).get("annotations") or {})
        return inherited, obj["spec"]["jobTemplate"]["spec"]["template"]
    return dict(obj["metadata"].get("annotations") or {}), obj["spec"]["template"]


def pod_from(obj):
    """The Pod its controller would create: the template's metadata and spec, a
    generated name, the namespace, and a StatefulSet's claim volumes. Annotations
    the CLI reads from the workload are copied onto the pod (the webhook sees only the pod)."""
    if obj["kind"] == "Pod":
        return copy.deepcopy(obj)
    inherited, template = template_of(obj)
    meta = copy.deepcopy(template.get("metadata") or {})
    meta["annotations"] = {
        **{k: v for k, v in inherited.items() if k.startswith("switchyard.io/")},
        **(meta.get("annotations") or {}),
    }
    meta["generateName"] = obj["metadata"]["name"] + "-"
    meta["namespace"] = obj["metadata"].get("namespace", "default")
    meta["ownerReferences"] = [
        {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": obj["metadata"]["name"],
         "uid": "6d3c8f5e-0000-4000-8000-000000000001", "controller": True, "blockOwnerDeletion": True}
    ]
    spec = copy.deepcopy(template["spec"])
    for claim in obj["spec"].get("volumeClaimTemplates") or []:
        name = claim["metadata"]["name"]
        spec.setdefault("volumes", []).append(
            {"name": name, "persistentVolumeClaim": {"claimName": f"{name}-{obj['metadata']['name']}-0"}}
        )
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def load_golden(kind, which):
    return [d for d in yaml.safe_load_all((GOLDEN / f"{kind}.{which}.yaml").read_text()) if d]
