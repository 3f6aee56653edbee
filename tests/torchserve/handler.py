"""A TorchServe handler for Switchyard's tests: no torch, no model file.

Each request of a batch carries a JSON list of numbers (or an object
``{"values": [...], "sleep": seconds, "fail": code}``); the answer for it is
``{"sum": ..., "batch_size": ..., "version": ..., "explain": ...}``, so the
tests can see how many requests TorchServe handed the worker at once, which
model version answered and whether the request came as an explanation.
``fail`` raises a PredictionException with that status code and ``crash``
any other exception (the error mapping tests); ``sleep`` delays the whole batch (the timeout tests).
"""

import json
import time

from ts.utils.util import PredictionException


def _body(row):
    # TorchServe hands the REST body as "body" (or "data"); a gRPC input map
    # arrives key by key.
    if isinstance(row, dict):
        raw = row.get("body", row.get("data"))
        if raw is None and row:
            raw = next(iter(row.values()))
    else:
        raw = row
    if isinstance(raw, (bytes, bytearray)):
        raw = raw.decode("utf-8")
    if isinstance(raw, str):
        raw = json.loads(raw)
    return raw


def handle(data, context):
    if data is None:
        # The load-time call TorchServe makes while initializing a worker.
        return None
    version = context.manifest.get("model", {}).get("modelVersion", "")
    bodies = [_body(row) for row in data]
    delay = max((b.get("sleep", 0) for b in bodies if isinstance(b, dict)), default=0)
    if delay:
        time.sleep(float(delay))
    out = []
    for i, body in enumerate(bodies):
        if isinstance(body, dict):
            if body.get("crash"):
                raise RuntimeError("asked to crash")
            if "fail" in body:
                raise PredictionException(f"asked to fail with {body['fail']}", int(body["fail"]))
            values = body.get("values", [])
        else:
            values = body
        if not isinstance(values, list) or not all(isinstance(v, (int, float)) for v in values):
            raise PredictionException("the body must be a JSON list of numbers", 400)
        explain = (context.get_request_header(i, "explain") or "").lower() == "true"
        out.append(
            {
                "sum": sum(values),
                "batch_size": len(bodies),
                "version": version,
                "explain": explain,
            }
        )
    return out
