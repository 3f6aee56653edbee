"""A stand-in for TensorFlow Serving's REST and gRPC APIs, for tests and benchmarks.

TF Serving itself cannot be installed here, so this server speaks its REST
protocol as TF Serving documents it and as `tensorflow_serving/util/json_tensor.cc`
implements it, over ONNX models run by onnxruntime: `POST /v1/models/{m}
[/versions/{v}|/labels/{l}]:predict` in row (`instances` → `predictions`) and
columnar (`inputs` → `outputs`) form, `GET /v1/models/{m}[...]` (status) and
`.../metadata` (the `serving_default` signature, printed in lowerCamelCase as
TF Serving's JSON printer does), errors as `{"error": "..."}` with TF
Serving's texts and codes. With `--grpc-port`, also TF Serving's gRPC API
(`PredictionService.Predict`/`GetModelMetadata`, `ModelService.GetModelStatus`)
from the repo's own protos (`runtime/proto`, stubs made by grpcio-tools at
start): `TensorProto`s read as TensorFlow reads them, written as TF Serving
writes them. `tests/python/test_tfserving.py` (REST) and
`test_tfserving_backend.py` (gRPC) check it against the real `ovmsclient`
before anything relies on it.

Classify and Regress (REST `:classify`/`:regress`, gRPC `Classify`/`Regress`)
run every model through two more signatures of the stand-in's own making, as
a TF Serving model exported with them would have: `classification`
(`tensorflow/serving/classify`: the model's first output per example, labels
`"0"`, `"1"`, … with the output's values as scores) and `regression`
(`tensorflow/serving/regress`: the first value of the first output per
example). Each tf.Example's features (plus the context's) are the model's
inputs by name, flattened per example. Asking either method of the
`serving_default` signature (the default) is TF Serving's refusal of a
predict signature. REST bodies follow TF Serving's documented form
(`{"signature_name", "context", "examples": [{feature: value | [values] |
{"b64": …}}]}` → `{"results": …}`); gRPC's are `Input.example_list`
(`_with_context`) of tf.Examples → `ClassificationResult`/`RegressionResult`.
This is a stand-in, not TF Serving's feature parsing (`tf.parse_example`).

Faults are explicit settings (`Faults`): `--delay NAME=SECONDS`, `--loading
NAME`, `--complex-output NAME`. `GET /standin/tenants` lists the `x-tenant`
header of every predict (what a proxy forwarded). `tests/python/test_tfserving_backend.py` drives
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


def text(b):
    """ONNX Runtime's strings are text: UTF-8 bytes are given to it as `str` (it
    would hold the `repr` of a `bytes`)."""
    try:
        return b.decode()
    except UnicodeDecodeError:
        return b


def to_array(v, dtype):
    check_dense(v, dense_shape(v))
    if dtype is object:
        def leaf(x):
            if isinstance(x, dict) and list(x) == ["b64"]:
                return text(base64.b64decode(x["b64"]))
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
    if isinstance(a, np.ndarray) and a.dtype != object:
        return a.tolist()
    if isinstance(a, np.ndarray):
        return [plain(x, b64) for x in a] if a.ndim else plain(a.item(), b64)
    if isinstance(a, bytes):
        try:
            if not b64:
                return a.decode()
        except UnicodeDecodeError:
            pass
        return {"b64": base64.b64encode(a).decode()}
    if isinstance(a, str) and b64:
        return {"b64": base64.b64encode(a.encode()).decode()}
    return a


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


# The stand-in's classification and regression signatures (see the module doc).
EXAMPLE_SIGNATURES = {"classify": ("classification", "classification"),
                      "regress": ("regression", "regression")}


def run_examples(session, verb, signature_name, examples, context):
    """Classify or regress `examples` (each {feature: list of values}) on `session`:
    TF Serving's answer as Python values, or TfError with its text."""
    kind, wanted = EXAMPLE_SIGNATURES[verb]
    if signature_name in ("", "serving_default"):
        raise TfError(400, f"Expected {kind} signature method_name to be tensorflow/serving/{verb}. "
                           "Was: tensorflow/serving/predict")
    if signature_name != wanted:
        raise TfError(400, f'Serving signature name: "{signature_name}" not found in signature def')
    if not examples:
        raise TfError(400, "Input is empty.")
    feeds = {}
    for i in session.get_inputs():
        dtype = ONNX_TO_DT[i.type][1]
        column = []
        for ex in examples:
            values = {**context, **ex}.get(i.name)
            if values is None:
                raise TfError(400, f"Feature: {i.name} (data type: {ONNX_TO_DT[i.type][0]}) is required "
                                   "but could not be found.")
            column.append(values)
        try:
            a = np.array(column, dtype=dtype)
            feeds[i.name] = a.reshape([len(examples)] + [d if isinstance(d, int) else -1 for d in i.shape[1:]])
        except (TypeError, ValueError) as e:
            raise TfError(400, f"Feature: {i.name}: {e}") from e
    try:
        out = session.run([session.get_outputs()[0].name], feeds)[0].reshape(len(examples), -1)
    except Exception as e:  # the model refused the tensors
        raise TfError(400, str(e)) from e
    if verb == "classify":
        return [[(str(k), float(v)) for k, v in enumerate(row)] for row in out]
    return [float(row[0]) for row in out]


def json_feature(v):
    """A REST example's feature value as a list: a value or a list of values, `{"b64": …}` bytes."""
    items = v if isinstance(v, list) else [v]
    return [base64.b64decode(x["b64"]) if isinstance(x, dict) and list(x) == ["b64"] else x for x in items]


def rest_examples(model, version, verb, body):
    try:
        doc = json.loads(body or b"")
    except ValueError as e:
        raise TfError(400, f"JSON Parse error: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("examples"), list):
        raise TfError(400, "'examples' array is missing or empty")
    context = {k: json_feature(v) for k, v in (doc.get("context") or {}).items()}
    examples = [{k: json_feature(v) for k, v in ex.items()} for ex in doc["examples"]]
    results = run_examples(model.session(version), verb, doc.get("signature_name", ""), examples, context)
    if verb == "classify":
        return {"results": [[[label, score] for label, score in r] for r in results]}
    return {"results": results}


def proto_feature(f):
    kind = f.WhichOneof("kind")
    return list(getattr(f, kind).value) if kind else []


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


# The `x-tenant` header (gRPC: metadata) of every predict, in order, as
# ("rest" | "grpc", model, value): what `GET /standin/tenants` answers, so a
# test can see which client headers a proxy forwarded. Not part of TF Serving.
TENANTS = []


def make_handler(models):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes: with Nagle on, a keep-alive
        # client's delayed ACK holds the body back ~40 ms per request.
        disable_nagle_algorithm = True

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
            if self.path == "/standin/tenants":
                return self.reply(200, TENANTS)
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
                TENANTS.append(("rest", model.name, self.headers.get("x-tenant")))
                if verb not in ("predict", "classify", "regress"):
                    raise TfError(404, "Malformed request")
                if model.loading:
                    raise TfError(404, not_found(model.name, version))
                if verb != "predict":
                    if model.delay:
                        time.sleep(model.delay)
                    return self.reply(200, rest_examples(model, version, verb, body))
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


# TF's DataType numbers (tensorflow/core/framework/types.proto) ↔ numpy.
DT_NUMBERS = {"DT_FLOAT": 1, "DT_DOUBLE": 2, "DT_INT32": 3, "DT_UINT8": 4, "DT_INT16": 5, "DT_INT8": 6,
              "DT_STRING": 7, "DT_COMPLEX64": 8, "DT_INT64": 9, "DT_BOOL": 10, "DT_UINT16": 17, "DT_HALF": 19,
              "DT_UINT32": 22, "DT_UINT64": 23}
NP_OF_DT = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8, 7: object,
            9: np.int64, 10: np.bool_, 17: np.uint16, 19: np.float16, 22: np.uint32, 23: np.uint64}
# The typed field of each dtype, as TensorFlow reads one (`Tensor::FromProto`).
VAL_FIELD = {1: "float_val", 2: "double_val", 3: "int_val", 4: "int_val", 5: "int_val", 6: "int_val",
             7: "string_val", 9: "int64_val", 10: "bool_val", 17: "int_val", 19: "half_val", 22: "uint32_val",
             23: "uint64_val"}


def generate_stubs(out_dir):
    """Python messages and stubs of the repo's TF Serving protos (runtime/proto), made
    with grpcio-tools; `google/protobuf/*` are protobuf's own (the repo's copies are
    only for prost)."""
    from grpc_tools import protoc
    import grpc_tools
    proto_root = Path(__file__).resolve().parents[2] / "runtime" / "proto"
    files = sorted(str(p.relative_to(proto_root)) for p in proto_root.rglob("*.proto")
                   if p.parts[-3:-1] != ("google", "protobuf") and
                   p.relative_to(proto_root).parts[0] in ("tensorflow", "tensorflow_serving"))
    well_known = str(Path(grpc_tools.__file__).parent / "_proto")
    rc = protoc.main(["protoc", f"-I{well_known}", f"-I{proto_root}", f"--python_out={out_dir}",
                      f"--grpc_python_out={out_dir}", *files])
    if rc != 0:
        raise SystemExit(f"protoc failed ({rc}) on {files}")
    sys.path.insert(0, str(out_dir))


def proto_to_array(tp):
    """A TensorProto as TensorFlow reads it: `tensor_content` when set, else the
    dtype's typed field, one value filling the shape."""
    shape = [d.size for d in tp.tensor_shape.dim]
    if tp.dtype not in NP_OF_DT:
        raise TfError(400, f"Unsupported dtype {tp.dtype}")
    dtype = NP_OF_DT[tp.dtype]
    count = int(np.prod(shape)) if shape else 1
    if dtype is object:
        values = [text(b) for b in tp.string_val]
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
    elif tp.tensor_content:
        arr = np.frombuffer(tp.tensor_content, dtype=dtype)
    else:
        values = list(getattr(tp, VAL_FIELD[tp.dtype]))
        if tp.dtype == 19:
            arr = np.array(values, dtype=np.uint16).view(np.float16)
        else:
            arr = np.array(values, dtype=dtype)
    if arr.size == 1 and count != 1:
        arr = np.full(count, arr[0], dtype=arr.dtype)
    if arr.size != count:
        raise TfError(400, f"tensor of shape {shape} holds {arr.size} values")
    return arr.reshape(shape)


def array_to_proto(pb, a):
    """As TF Serving writes predict outputs: `tensor_content` for numbers, `string_val` for strings."""
    a = np.asarray(a)
    tp = pb["tensor"].TensorProto()
    for d in a.shape:
        tp.tensor_shape.dim.add().size = d
    if a.dtype == object:
        tp.dtype = 7
        tp.string_val.extend(x if isinstance(x, bytes) else str(x).encode() for x in a.reshape(-1))
        return tp
    number = {np.dtype(v): k for k, v in NP_OF_DT.items() if v is not object}[a.dtype]
    tp.dtype = number
    tp.tensor_content = np.ascontiguousarray(a).tobytes()
    return tp


def serve_grpc(port, models):
    """TF Serving's gRPC API: PredictionService (Predict, GetModelMetadata) and
    ModelService (GetModelStatus), with TF Serving's status codes and texts."""
    from concurrent import futures
    import importlib
    import grpc
    pb = {name: importlib.import_module(mod) for name, mod in [
        ("predict", "tensorflow_serving.apis.predict_pb2"),
        ("classification", "tensorflow_serving.apis.classification_pb2"),
        ("regression", "tensorflow_serving.apis.regression_pb2"),
        ("metadata", "tensorflow_serving.apis.get_model_metadata_pb2"),
        ("status", "tensorflow_serving.apis.get_model_status_pb2"),
        ("prediction_grpc", "tensorflow_serving.apis.prediction_service_pb2_grpc"),
        ("model_grpc", "tensorflow_serving.apis.model_service_pb2_grpc"),
        ("tensor", "tensorflow.core.framework.tensor_pb2"),
        ("meta_graph", "tensorflow.core.protobuf.meta_graph_pb2"),
    ]}
    codes = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND}

    def target(spec, context):
        model = models.get(spec.name)
        # 0 is "latest" to OpenVINO Model Server, whose client always names a version.
        version = (spec.version.value or None) if spec.HasField("version") else None
        if spec.version_label:
            version = {"stable": None}.get(spec.version_label, spec.version_label)
        if model is None or (version is not None and version not in model.versions) or model.loading:
            context.abort(grpc.StatusCode.NOT_FOUND, not_found(spec.name, version))
        return model, version if version is not None else max(model.versions)

    def check_signature(spec, context):
        if spec.signature_name not in ("", "serving_default"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f'Serving signature name: "{spec.signature_name}" not found in signature def')

    class Prediction(pb["prediction_grpc"].PredictionServiceServicer):
        def Predict(self, request, context):
            model, version = target(request.model_spec, context)
            TENANTS.append(("grpc", model.name, dict(context.invocation_metadata()).get("x-tenant")))
            check_signature(request.model_spec, context)
            if model.delay:
                time.sleep(model.delay)
            session = model.session(version)
            names = [o.name for o in session.get_outputs()]
            wanted = list(request.output_filter) or names
            for n in wanted:
                if n not in names:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"output tensor alias not found in signature: {n}")
            expected = {i.name for i in session.get_inputs()}
            if set(request.inputs) != expected:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"input size does not match signature: {len(request.inputs)}!={len(expected)}")
            try:
                feeds = {k: proto_to_array(v) for k, v in request.inputs.items()}
                outputs = session.run(wanted, feeds)
            except TfError as e:
                context.abort(codes[e.status], str(e))
            except Exception as e:  # the model refused the tensors
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            resp = pb["predict"].PredictResponse()
            resp.model_spec.name = model.name
            resp.model_spec.version.value = version
            resp.model_spec.signature_name = "serving_default"
            for n, o in zip(wanted, outputs):
                resp.outputs[n].CopyFrom(array_to_proto(pb, o))
            return resp

        def examples(self, request, verb, context):
            model, version = target(request.model_spec, context)
            TENANTS.append(("grpc", model.name, dict(context.invocation_metadata()).get("x-tenant")))
            if model.delay:
                time.sleep(model.delay)
            kind = request.input.WhichOneof("kind")
            if kind is None:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Input is empty.")
            listed = getattr(request.input, kind)
            ctx = {}
            if kind == "example_list_with_context":
                ctx = {k: proto_feature(f) for k, f in listed.context.features.feature.items()}
            examples = [{k: proto_feature(f) for k, f in ex.features.feature.items()} for ex in listed.examples]
            try:
                results = run_examples(model.session(version), verb, request.model_spec.signature_name, examples,
                                       ctx)
            except TfError as e:
                context.abort(codes[e.status], str(e))
            return model, version, results

        def answer_spec(self, resp, model, version, verb):
            resp.model_spec.name = model.name
            resp.model_spec.version.value = version
            resp.model_spec.signature_name = EXAMPLE_SIGNATURES[verb][1]

        def Classify(self, request, context):
            model, version, results = self.examples(request, "classify", context)
            resp = pb["classification"].ClassificationResponse()
            self.answer_spec(resp, model, version, "classify")
            for r in results:
                c = resp.result.classifications.add()
                for label, score in r:
                    cls = c.classes.add()
                    cls.label, cls.score = label, score
            return resp

        def Regress(self, request, context):
            model, version, results = self.examples(request, "regress", context)
            resp = pb["regression"].RegressionResponse()
            self.answer_spec(resp, model, version, "regress")
            for v in results:
                resp.result.regressions.add().value = v
            return resp

        def GetModelMetadata(self, request, context):
            model, version = target(request.model_spec, context)
            if list(request.metadata_field) != ["signature_def"]:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Metadata field signature_def is required")
            sig = signature(model.session(version), model.complex_output)
            defs = pb["metadata"].SignatureDefMap()
            d = defs.signature_def["serving_default"]
            d.method_name = sig["methodName"]
            for role in ("inputs", "outputs"):
                for name, info in sig[role].items():
                    ti = getattr(d, role)[name]
                    ti.name = info["name"]
                    ti.dtype = DT_NUMBERS[info["dtype"]]
                    for dim in info["tensorShape"]["dim"]:
                        ti.tensor_shape.dim.add().size = int(dim["size"])
            resp = pb["metadata"].GetModelMetadataResponse()
            resp.model_spec.name = model.name
            resp.model_spec.version.value = version
            resp.metadata["signature_def"].Pack(defs)
            return resp

    class Status(pb["model_grpc"].ModelServiceServicer):
        def GetModelStatus(self, request, context):
            spec = request.model_spec
            model = models.get(spec.name)
            version = (spec.version.value or None) if spec.HasField("version") else None
            if model is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {spec.name}")
            if version is not None and version not in model.versions:
                context.abort(grpc.StatusCode.NOT_FOUND, f"Could not find version {version} of model {spec.name}")
            resp = pb["status"].GetModelStatusResponse()
            state = pb["status"].ModelVersionStatus.LOADING if model.loading else \
                pb["status"].ModelVersionStatus.AVAILABLE
            for v in ([version] if version is not None else sorted(model.versions)):
                s = resp.model_version_status.add()
                s.version, s.state = v, state
            return resp

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb["prediction_grpc"].add_PredictionServiceServicer_to_server(Prediction(), server)
    pb["model_grpc"].add_ModelServiceServicer_to_server(Status(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server


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
    ap.add_argument("--grpc-port", type=int, help="also serve TF Serving's gRPC API on this port")
    ap.add_argument("--stubs-dir", help="where the gRPC stubs are generated (default: a new temporary directory)")
    args = ap.parse_args()
    faults = Faults({k: float(v) for k, v in (d.split("=", 1) for d in args.delay)}, args.loading,
                    args.complex_output)
    models = {}
    for arg in args.models:
        name, directory = arg.split("=", 1)
        models[name] = Model(name, directory, faults)
    if args.grpc_port:
        import tempfile
        stubs = args.stubs_dir or tempfile.mkdtemp(prefix="tfserving-standin-stubs-")
        Path(stubs).mkdir(parents=True, exist_ok=True)
        generate_stubs(stubs)
        grpc_server = serve_grpc(args.grpc_port, models)  # noqa: F841 (serves while the process lives)
    ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(models)).serve_forever()


if __name__ == "__main__":
    main()
