"""Minimal MLServer runtime serving an ONNX file with onnxruntime (Switchyard tests).

model-settings.json: "implementation": "onnx_runtime.OnnxRuntimeModel",
"parameters": {"uri": "<path relative to model-settings.json>",
               "extra": {"delay_ms": 0, "intra_op_threads": 1}}
"""
import asyncio

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxRuntimeModel(MLModel):
    async def load(self) -> bool:
        extra = (self.settings.parameters.extra or {}) if self.settings.parameters else {}
        self._delay_s = float(extra.get("delay_ms", 0)) / 1000.0
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(extra.get("intra_op_threads", 1))
        uri = await get_model_uri(self.settings, wellknown_filenames=["model.onnx"])
        self._session = ort.InferenceSession(uri, opts, providers=["CPUExecutionProvider"])
        self._output_names = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        if self._delay_s > 0:
            await asyncio.sleep(self._delay_s)
        feeds = {inp.name: NumpyCodec.decode_input(inp) for inp in payload.inputs}
        wanted = [o.name for o in payload.outputs] if payload.outputs else self._output_names
        results = self._session.run(wanted, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(n, r) for n, r in zip(wanted, results)],
        )
