"""KServe's own Python client (`kserve.InferenceRESTClient`, v1 and v2) against one server,
for the differential test (`tests/integration/test_kserve_differential.py`); run by the
KServe venv's Python, not marfleet's:

    <kserve venv>/bin/python tests/kserve_client.py BASE_URL

Prints one JSON object: what each call returned, or the status and message of the error it
raised, for the model `double` of `tests/kserve_app.py` (and its marfleet twin).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable
from typing import Any

import httpx
import numpy as np
from kserve import InferenceRESTClient, RESTConfig
from kserve.protocol.infer_type import InferInput, InferRequest


async def outcome(call: Awaitable[Any]) -> Any:
    try:
        return {"ok": await call}
    except httpx.HTTPStatusError as error:
        return {"status": error.response.status_code, "message": str(error)}


def v2_request(model: str) -> InferRequest:
    tensor = InferInput(name="x", shape=[2, 2], datatype="FP32")
    tensor.set_data_from_numpy(np.array([[1, 2], [3, 4.5]], dtype=np.float32), binary_data=True)
    return InferRequest(model_name=model, infer_inputs=[tensor], request_id="sdk-1")


async def main(base: str) -> dict[str, Any]:
    results: dict[str, Any] = {}
    v1 = InferenceRESTClient(RESTConfig(protocol="v1", timeout=30))
    results["v1 live"] = await outcome(v1.is_server_live(base))
    results["v1 model ready"] = await outcome(v1.is_model_ready(base, "double"))
    results["v1 predict"] = await outcome(v1.infer(base, {"instances": [[1, 2]]}, "double"))
    results["v1 predict nope"] = await outcome(v1.infer(base, {"instances": [[1]]}, "nope"))
    await v1.close()
    v2 = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    results["v2 live"] = await outcome(v2.is_server_live(base))
    results["v2 ready"] = await outcome(v2.is_server_ready(base))
    results["v2 model ready"] = await outcome(v2.is_model_ready(base, "double"))
    results["v2 model ready nope"] = await outcome(v2.is_model_ready(base, "nope"))
    answer = await outcome(v2.infer(base, v2_request("double"), "double"))
    if "ok" in answer:
        response = answer["ok"]
        output = response.outputs[0]
        answer["ok"] = {
            "id": response.id,
            "model_name": response.model_name,
            "output": [output.name, output.datatype, output.shape, output.as_numpy().tolist()],
        }
    results["v2 infer"] = answer
    results["v2 infer nope"] = await outcome(v2.infer(base, v2_request("nope"), "nope"))
    await v2.close()
    return results


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1]))))
