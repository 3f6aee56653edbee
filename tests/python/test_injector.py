"""`switchyard injector`, the mutating admission webhook, as the API server
calls it: AdmissionReview v1 requests over TLS (the client verifies the
server's certificate against a CA made here), the JSONPatch it answers applied
with the `jsonpatch` library, the patched pod checked against what
`switchyard inject` makes of the same template and against the Kubernetes schemas.

The keys made here are test keys: generated per run, never stored in the repository.
"""
import base64
import copy
import datetime
import ipaddress
import re
import socket
import ssl
import time
import uuid

import jsonpatch
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from harness import POLL_S, Proc, switchyard_bin
from kube import KINDS, load_golden, objects, pod_from, template_of, validate

PATIENCE_S = 30.0


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_server_cert(ca_key, ca_cert, cn):
    """A serving certificate for the injector's Service name and loopback, as cert-manager would issue."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("switchyard-injector.switchyard-system.svc"),
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def write_pair(tmp, key, cert):
    (tmp / "tls.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (tmp / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@pytest.fixture(scope="module")
def injector(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("injector")
    ca_key, ca_cert = make_ca("switchyard test CA")
    (tmp / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    key, cert = make_server_cert(ca_key, ca_cert, "injector-1")
    write_pair(tmp, key, cert)
    proc = Proc(
        "switchyard injector",
        [switchyard_bin(), "injector", "--listen", "127.0.0.1:0",
         "--tls-cert", str(tmp / "tls.crt"), "--tls-key", str(tmp / "tls.key")],
        tmp / "injector.log",
    )
    try:
        deadline = time.monotonic() + PATIENCE_S
        while not (m := re.search(r"listening on https://127\.0\.0\.1:(\d+)", proc.log())):
            if proc.p.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the injector did not start:\n{proc.log()}")
            time.sleep(POLL_S)
        port = int(m.group(1))
        yield {"url": f"https://127.0.0.1:{port}", "port": port, "ca": str(tmp / "ca.crt"),
               "ca_key": ca_key, "ca_cert": ca_cert, "tmp": tmp, "proc": proc}
    finally:
        proc.stop()


def admission_review(pod, namespace, dry_run=False, kind="Pod", operation="CREATE"):
    """An AdmissionReview v1 as kube-apiserver sends it to a mutating webhook for a pod CREATE."""
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": kind},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": pod.get("metadata", {}).get("name", "") if isinstance(pod, dict) else "",
            "namespace": namespace,
            "operation": operation,
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "a7f0c5b3-5d0c-4c5e-9d3e-2f1e0e8c0a11",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"],
            },
            "object": pod,
            "oldObject": None,
            "dryRun": dry_run,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def post(injector, path, review):
    r = requests.post(injector["url"] + path, json=review, verify=injector["ca"], timeout=10)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    assert answer["response"]["uid"] == review["request"]["uid"], "the uid is echoed"
    return answer["response"]


def apply_patch(pod, response):
    assert response["allowed"] is True, response
    assert response["patchType"] == "JSONPatch"
    patch = jsonpatch.JsonPatch.from_string(base64.b64decode(response["patch"]).decode())
    return patch.apply(pod)


def test_the_handshake_verifies_against_the_ca_and_speaks_http11(injector):
    ctx = ssl.create_default_context(cafile=injector["ca"])
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", injector["port"]), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.selected_alpn_protocol() == "http/1.1"
            assert dict(x[0] for x in tls.getpeercert()["subject"])["commonName"].startswith("injector-")
    assert requests.get(injector["url"] + "/health", verify=injector["ca"], timeout=10).text == "ok\n"
    _, other_ca = make_ca("some other CA")
    other = injector["tmp"] / "other-ca.crt"
    other.write_bytes(other_ca.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(injector["url"] + "/health", verify=str(other), timeout=10)


@pytest.mark.parametrize("kind", KINDS)
def test_each_workload_kinds_pod_is_injected_as_switchyard_inject_does(injector, kind):
    cli_out = list(objects(load_golden(kind, "out")))
    for workload in objects(load_golden(kind, "in")):
        if workload["kind"] not in ("Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"):
            continue
        pod = pod_from(workload)
        injected_by_cli = next(
            o for o in cli_out if o["kind"] == workload["kind"] and o["metadata"]["name"] == workload["metadata"]["name"]
        )
        _, cli_template = template_of(injected_by_cli)
        annotations = pod["metadata"].get("annotations") or {}
        if annotations.get("switchyard.io/inject") == "disabled":
            response = post(injector, "/inject-namespace", admission_review(pod, "batch"))
            assert response["allowed"] is True and "patch" not in response
            continue
        # Opted-in pods go to /inject; the others only to the namespace-wide entry.
        path = "/inject" if annotations.get("switchyard.io/inject") == "enabled" else "/inject-namespace"
        if path == "/inject-namespace":
            skipped = post(injector, "/inject", admission_review(pod, "models"))
            assert skipped["allowed"] is True and "patch" not in skipped, "not opted in: /inject leaves it"
        before = copy.deepcopy(pod)
        patched = apply_patch(pod, post(injector, path, admission_review(pod, pod["metadata"].get("namespace", "default"))))
        assert pod == before, "the patch library did not mutate its input"
        validate(patched)

        # The same sidecar, volumes and grace period as the CLI's template (the pod
        # also holds what its controller added: a StatefulSet's claim volumes).
        claims = {c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates") or []}
        patched_spec = copy.deepcopy(patched["spec"])
        patched_spec["volumes"] = [v for v in patched_spec.get("volumes", []) if v["name"] not in claims]
        if not patched_spec["volumes"]:
            del patched_spec["volumes"]
        assert patched_spec == cli_template["spec"], f"{kind}: the webhook and the CLI differ"
        assert patched["metadata"]["annotations"]["switchyard.io/injected"] == \
            cli_template["metadata"]["annotations"]["switchyard.io/injected"]

        # Sent again (a reinvocation): already injected, nothing to patch.
        again = post(injector, path, admission_review(patched, "models"))
        assert again["allowed"] is True and "patch" not in again


def test_a_dry_run_gets_the_same_patch(injector):
    pod = pod_from([o for o in objects(load_golden("deployment", "in")) if o["kind"] == "Deployment"][0])
    wet = post(injector, "/inject", admission_review(pod, "models"))
    dry = post(injector, "/inject", admission_review(pod, "models", dry_run=True))
    assert apply_patch(pod, wet) == apply_patch(pod, dry)


def _pod(annotations, containers):
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "triton-", "namespace": "models", "annotations": annotations},
            "spec": {"containers": containers}}


@pytest.mark.parametrize(
    "pod, reason",
    [
        (_pod({"switchyard.io/inject": "enabled"}, [{"name": "m", "image": "m"}]),
         "switchyard.io/config is missing"),
        (_pod({"switchyard.io/inject": "enabled", "switchyard.io/config": "sy"},
              [{"name": "m", "image": "m", "ports": [{"containerPort": 8102}]}]),
         "container `m` uses port 8102 (containerPort), which is Switchyard's sy-metrics port"),
        (_pod({"switchyard.io/inject": "enabled", "switchyard.io/config": "sy"},
              [{"name": "switchyard", "image": "someone/else:1"}]),
         "already has a container named `switchyard`"),
        (_pod({"switchyard.io/inject": "enabled", "switchyard.io/config": "sy", "switchyard.io/http-port": "http"},
              [{"name": "m", "image": "m"}]),
         'switchyard.io/http-port: "http" is not a port'),
    ],
)
def test_refusals_are_400_denials_that_say_why(injector, pod, reason):
    response = post(injector, "/inject", admission_review(pod, "models"))
    assert response["allowed"] is False
    assert "patch" not in response
    assert response["status"]["code"] == 400
    assert response["status"]["message"].startswith("switchyard injector refused pod models/triton-*: ")
    assert reason in response["status"]["message"], response["status"]["message"]


def test_what_the_webhook_does_not_understand_is_allowed_unchanged(injector):
    pod = _pod({"switchyard.io/inject": "enabled", "switchyard.io/config": "sy"}, [{"name": "m", "image": "m"}])
    for review in [
        admission_review(pod, "models", kind="Deployment"),
        admission_review(pod, "models", operation="UPDATE"),
        admission_review("not a pod", "models"),
    ]:
        response = post(injector, "/inject", review)
        assert response["allowed"] is True and "patch" not in response
        assert response["warnings"][0].startswith("switchyard injector: "), response
    # No uid to answer to: a plain 400, never a 500.
    for body in [b"{", b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": {}}']:
        r = requests.post(injector["url"] + "/inject", data=body, verify=injector["ca"], timeout=10)
        assert r.status_code == 400 and r.json()["error"], r.text
    assert requests.get(injector["url"] + "/inject", verify=injector["ca"], timeout=10).status_code == 405
    assert requests.post(injector["url"] + "/mutate", json={}, verify=injector["ca"], timeout=10).status_code == 404


def test_a_rotated_certificate_is_served_without_a_restart(injector):
    # Rotated as the kubelet updates a mounted Secret: new files renamed into place.
    key, cert = make_server_cert(injector["ca_key"], injector["ca_cert"], "injector-2")
    staging = injector["tmp"] / "staging"
    staging.mkdir(exist_ok=True)
    write_pair(staging, key, cert)
    (staging / "tls.key").rename(injector["tmp"] / "tls.key")
    (staging / "tls.crt").rename(injector["tmp"] / "tls.crt")
    ctx = ssl.create_default_context(cafile=injector["ca"])
    deadline = time.monotonic() + PATIENCE_S
    while True:
        with socket.create_connection(("127.0.0.1", injector["port"]), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                cn = dict(x[0] for x in tls.getpeercert()["subject"])["commonName"]
        if cn == "injector-2":
            break
        assert time.monotonic() < deadline, f"still serving {cn} after {PATIENCE_S}s:\n{injector['proc'].log()}"
        time.sleep(0.2)
    assert "TLS certificate reloaded" in injector["proc"].log()
