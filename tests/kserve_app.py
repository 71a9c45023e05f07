"""KServe's own model server with one model, `double`, for the differential test
(`tests/integration/test_kserve_differential.py`); run by the KServe venv's Python
(`e2e.bench.peer_venv.kserve_venv()`), not marfleet's:

    <kserve venv>/bin/python tests/kserve_app.py HTTP_PORT GRPC_PORT

`double` answers a v2 request with one FP32 output `y`, twice its first input, and a v1
request `{"instances": [[...], ...]}` with `{"predictions": ...}` doubled the same way; an
input named `fail` makes it raise. marfleet serves the same behaviour through a handler
(`DOUBLE_HANDLER` in the test).
"""

from __future__ import annotations

import sys
from typing import Any

import kserve
import numpy as np
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse


class Double(kserve.Model):
    def __init__(self) -> None:
        super().__init__("double")
        self.ready = True

    async def predict(
        self, payload: InferRequest | dict[str, Any], headers: Any = None, **_: Any
    ) -> InferResponse | dict[str, Any]:
        if isinstance(payload, dict):  # v1
            return {"predictions": (np.asarray(payload["instances"]) * 2).tolist()}
        tensor = payload.inputs[0]
        if tensor.name == "fail":
            raise ValueError("asked to fail")
        doubled = (tensor.as_numpy() * 2).astype(np.float32)
        output = InferOutput(name="y", shape=list(doubled.shape), datatype="FP32")
        output.set_data_from_numpy(doubled, binary_data=True)
        return InferResponse(response_id=payload.id, model_name=self.name, infer_outputs=[output])


if __name__ == "__main__":
    http_port, grpc_port = int(sys.argv[1]), int(sys.argv[2])
    server = kserve.ModelServer(http_port=http_port, grpc_port=grpc_port, workers=1)
    server.start([Double()])
