"""A stand-in for TensorFlow Serving's REST API, for tests and benchmarks.

TF Serving itself cannot be installed here, so this server speaks its REST
protocol as TF Serving documents it and as `tensorflow_serving/util/json_tensor.cc`
implements it, over ONNX models run by onnxruntime: `POST /v1/models/{m}
[/versions/{v}|/labels/{l}]:predict` in row (`instances` → `predictions`) and
columnar (`inputs` → `outputs`) form, `GET /v1/models/{m}[...]` (status) and
`.../metadata` (the `serving_default` signature, printed in lowerCamelCase as
TF Serving's JSON printer does), errors as `{"error": "..."}` with TF
Serving's texts and codes. `tests/python/test_tfserving.py` checks it against
the real `ovmsclient` before anything relies on it.

Faults are explicit settings (`Faults`): `--delay NAME=SECONDS`, `--loading
NAME`, `--complex-output NAME`. `tests/python/test_tfserving_backend.py` drives
Switchyard's `tfserving` backend against it.

Usage: python tfserving_standin.py PORT NAME=MODEL_DIR [NAME=MODEL_DIR ...] [faults]
(MODEL_DIR holds VERSION/model.onnx, as a Switchyard onnx repository).
"""

import argparse
import base64
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import onnxruntime as ort

ONNX_TO_DT = {
    "tensor(float)": ("DT_FLOAT", np.float32), "tensor(double)": ("DT_DOUBLE", np.float64),
    "tensor(float16)": ("DT_HALF", np.float16), "tensor(int8)": ("DT_INT8", np.int8),
    "tensor(int16)": ("DT_INT16", np.int16), "tensor(uint8)": ("DT_UINT8", np.uint8),
    "tensor(int32)": ("DT_INT32", np.int32), "tensor(int64)": ("DT_INT64", np.int64),
    "tensor(string)": ("DT_STRING", object), "tensor(bool)": ("DT_BOOL", np.bool_),
}


class Faults:
    """Explicit fault settings, from the command line: `delay` (model → seconds
    every predict waits), `loading` (models whose versions report LOADING and
    are not servable, as TF Serving's are while they load) and `complex_output`
    (models whose signature also declares an output `c` of DT_COMPLEX64, a
    type KServe V2 has no datatype for)."""

    def __init__(self, delay=None, loading=(), complex_output=()):
        self.delay = dict(delay or {})
        self.loading = set(loading)
        self.complex_output = set(complex_output)


class Model:
    def __init__(self, name, directory, faults=None):
        self.name = name
        faults = faults or Faults()
        self.delay = faults.delay.get(name, 0.0)
        self.loading = name in faults.loading
        self.complex_output = name in faults.complex_output
        self.versions = {}
        for d in sorted(Path(directory).iterdir()):
            if d.name.isdigit() and (d / "model.onnx").exists():
                self.versions[int(d.name)] = ort.InferenceSession(str(d / "model.onnx"),
                                                                  providers=["CPUExecutionProvider"])

    def session(self, version):
        return self.versions[version if version is not None else max(self.versions)]


class TfError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def dense_shape(v):
    shape = []
    while isinstance(v, list):
        shape.append(len(v))
        if not v:
            break
        v = v[0]
    return shape


def check_dense(v, shape, level=0):
    if isinstance(v, list):
        if level >= len(shape):
            raise TfError(400, f"Encountered list at unexpected level: {level} expected < {len(shape)}")
        if len(v) != shape[level]:
            raise TfError(400, f"Encountered list at unexpected size: {len(v)} at level: {level} "
                               f"expected size: {shape[level]}")
        for item in v:
            check_dense(item, shape, level + 1)
    elif level != len(shape):
        raise TfError(400, f"JSON Value: {json.dumps(v)} found at incorrect level: {level + 1} in the JSON DOM. "
                           f"Expected at level: {len(shape)}")


def to_array(v, dtype):
    check_dense(v, dense_shape(v))
    if dtype is object:
        def leaf(x):
            if isinstance(x, dict) and list(x) == ["b64"]:
                return base64.b64decode(x["b64"])
            return x
        return np.array(json.loads(json.dumps(v), object_hook=leaf), dtype=object)
    try:
        return np.array(v, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise TfError(400, f"JSON Value: {json.dumps(v)[:200]} is not of expected type: {e}") from e


def decode(body, inputs):
    try:
        doc = json.loads(body or b"")
    except ValueError as e:
        raise TfError(400, f"JSON Parse error: {e}") from e
    if not isinstance(doc, dict):
        raise TfError(400, f"JSON Value: {json.dumps(doc)} Is not object")
    sig = doc.get("signature_name", "")
    if sig not in ("", "serving_default"):
        raise TfError(400, f'Serving signature name: "{sig}" not found in signature def')
    if "instances" in doc and "inputs" in doc:
        raise TfError(400, "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist ")
    names = [i.name for i in inputs]
    types = {i.name: ONNX_TO_DT[i.type][1] for i in inputs}
    if "instances" in doc:
        rows = doc["instances"]
        if not isinstance(rows, list) or not rows:
            raise TfError(400, "No values in 'instances' array")
        if len(names) == 1 and not (isinstance(rows[0], dict) and "b64" not in rows[0]):
            rows = [{names[0]: r} for r in rows]
        feeds = {}
        for n in names:
            column = [r[n] for r in rows]
            sizes = {json.dumps(dense_shape(c)) for c in column}
            if len(sizes) > 1:
                raise TfError(400, "Failed to process element of 'instances' list. Error: Expecting tensor size")
            feeds[n] = to_array(column, types[n])
        return feeds, "row"
    if "inputs" in doc:
        v = doc["inputs"]
        if not isinstance(v, dict) or "b64" in v:
            v = {names[0]: v}
        missing = [n for n in names if n not in v]
        if missing:
            raise TfError(400, f"Missing named input: {missing[0]} in 'inputs' object.")
        return {n: to_array(v[n], types[n]) for n in names}, "columnar"
    raise TfError(400, "Missing 'inputs' or 'instances' key")


def plain(a, b64=False):
    """A tensor as TF Serving's JSON: strings as text, or `{"b64": ...}` for an
    output named `*_bytes` and for bytes that are not UTF-8."""
    if a.dtype == object:
        if a.ndim:
            return [plain(x, b64) for x in a]
        v = a.item()
        if isinstance(v, bytes):
            try:
                if not b64:
                    return v.decode()
            except UnicodeDecodeError:
                pass
            return {"b64": base64.b64encode(v).decode()}
        return v
    return a.tolist()


def encode(names, outputs, form):
    b64 = [n.endswith("_bytes") for n in names]
    if form == "columnar":
        if len(names) == 1:
            return {"outputs": plain(outputs[0], b64[0])}
        return {"outputs": {n: plain(o, b) for n, o, b in zip(names, outputs, b64)}}
    if len(names) == 1:
        return {"predictions": plain(outputs[0], b64[0])}
    return {"predictions": [{n: plain(o[i], b) for n, o, b in zip(names, outputs, b64)}
                            for i in range(len(outputs[0]))]}


def signature(session, complex_output=False):
    def info(ts):
        out = {}
        for t in ts:
            dims = [{"size": str(d if isinstance(d, int) else -1), "name": ""} for d in t.shape]
            out[t.name] = {"dtype": ONNX_TO_DT[t.type][0], "tensorShape": {"dim": dims, "unknownRank": False},
                           "name": t.name}
        return out
    outputs = info(session.get_outputs())
    if complex_output:
        outputs["c"] = {"dtype": "DT_COMPLEX64", "tensorShape": {"dim": [{"size": "-1", "name": ""}],
                                                                 "unknownRank": False}, "name": "c:0"}
    return {"inputs": info(session.get_inputs()), "outputs": outputs,
            "methodName": "tensorflow/serving/predict", "defaults": {}}


def make_handler(models):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def reply(self, status, doc):
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def target(self, path):
            rest = path[len("/v1/models/"):]
            verb = None
            if ":" in rest.rsplit("/", 1)[-1]:
                rest, verb = rest.rsplit(":", 1)
            parts = rest.split("/")
            name, version, tail = parts[0], None, parts[1:]
            if tail[:1] == ["versions"] and len(tail) >= 2:
                # 0 is "latest" to OpenVINO Model Server, whose client always names a version.
                version, tail = (int(tail[1]) or None), tail[2:]
            elif tail[:1] == ["labels"] and len(tail) >= 2:
                version, tail = {"stable": None}.get(tail[1], tail[1]), tail[2:]
            model = models.get(name)
            if model is None or (version is not None and version not in model.versions):
                raise TfError(404, not_found(name, version))
            return model, version, verb, tail

        def do_GET(self):
            try:
                if not self.path.startswith("/v1/models/"):
                    raise TfError(404, "Malformed request")
                model, version, _, tail = self.target(self.path)
                versions = [version] if version is not None else sorted(model.versions)
                if tail == ["metadata"]:
                    if model.loading:
                        raise TfError(404, not_found(model.name, version))
                    v = version if version is not None else max(model.versions)
                    return self.reply(200, {
                        "modelSpec": {"name": model.name, "signatureName": "", "version": str(v)},
                        "metadata": {"signature_def": {
                            "@type": "type.googleapis.com/tensorflow.serving.SignatureDefMap",
                            "signatureDef": {"serving_default": signature(model.session(v), model.complex_output)}}}})
                state = "LOADING" if model.loading else "AVAILABLE"
                self.reply(200, {"model_version_status": [
                    {"version": str(v), "state": state, "status": {"error_code": "OK", "error_message": ""}}
                    for v in versions]})
            except TfError as e:
                self.reply(e.status, {"error": str(e)})

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                model, version, verb, _ = self.target(self.path)
                if verb != "predict":
                    raise TfError(400, f"Expected {verb} signature method_name")
                if model.loading:
                    raise TfError(404, not_found(model.name, version))
                if model.delay:
                    time.sleep(model.delay)
                session = model.session(version)
                feeds, form = decode(body, session.get_inputs())
                names = [o.name for o in session.get_outputs()]
                try:
                    outputs = session.run(names, feeds)
                except Exception as e:  # the model refused the tensors
                    raise TfError(400, str(e)) from e
                self.reply(200, encode(names, outputs, form))
            except TfError as e:
                self.reply(e.status, {"error": str(e)})

    return Handler


def not_found(name, version):
    spec = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
    return f"Servable not found for request: {spec}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("port", type=int)
    ap.add_argument("models", nargs="+", metavar="NAME=MODEL_DIR")
    ap.add_argument("--delay", action="append", default=[], metavar="NAME=SECONDS")
    ap.add_argument("--loading", action="append", default=[], metavar="NAME")
    ap.add_argument("--complex-output", action="append", default=[], metavar="NAME")
    args = ap.parse_args()
    faults = Faults({k: float(v) for k, v in (d.split("=", 1) for d in args.delay)}, args.loading,
                    args.complex_output)
    models = {}
    for arg in args.models:
        name, directory = arg.split("=", 1)
        models[name] = Model(name, directory, faults)
    ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(models)).serve_forever()


if __name__ == "__main__":
    main()
