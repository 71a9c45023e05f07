"""KServe's own Python clients (`kserve.InferenceRESTClient`, v1 and v2, and
`InferenceGRPCClient`) against one server, for the differential test
(`tests/integration/test_kserve_differential.py`); run by the KServe venv's Python, not
marfleet's:

    <kserve venv>/bin/python tests/kserve_client.py BASE_URL GRPC_TARGET

Prints one JSON object: what each call returned, or the status and message of the error it
raised, for the model `double` of `tests/kserve_app.py` (and its marfleet twin).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable
from typing import Any

import grpc
import httpx
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, RESTConfig
from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse


async def outcome(call: Awaitable[Any]) -> Any:
    try:
        answer = await call
    except httpx.HTTPStatusError as error:
        return {"status": error.response.status_code, "message": str(error)}
    except grpc.aio.AioRpcError as error:
        return {"status": str(error.code()), "message": error.details()}
    if isinstance(answer, InferResponse):
        output = answer.outputs[0]
        tensor = [output.name, output.datatype, output.shape, output.as_numpy().tolist()]
        return {"ok": {"id": answer.id, "model_name": answer.model_name, "output": tensor}}
    return {"ok": answer}


def v2_request(model: str) -> InferRequest:
    tensor = InferInput(name="x", shape=[2, 2], datatype="FP32")
    tensor.set_data_from_numpy(np.array([[1, 2], [3, 4.5]], dtype=np.float32), binary_data=True)
    return InferRequest(model_name=model, infer_inputs=[tensor], request_id="sdk-1")


async def main(base: str, grpc_target: str) -> dict[str, Any]:
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
    results["v2 infer"] = await outcome(v2.infer(base, v2_request("double"), "double"))
    results["v2 infer nope"] = await outcome(v2.infer(base, v2_request("nope"), "nope"))
    await v2.close()
    client = InferenceGRPCClient(grpc_target, timeout=30, retries=2)
    results["grpc live"] = await outcome(client.is_server_live())
    results["grpc ready"] = await outcome(client.is_server_ready())
    results["grpc model ready"] = await outcome(client.is_model_ready("double"))
    results["grpc model ready nope"] = await outcome(client.is_model_ready("nope"))
    results["grpc infer"] = await outcome(client.infer(v2_request("double")))
    results["grpc infer nope"] = await outcome(client.infer(v2_request("nope")))
    await client.close()
    return results


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2]))))
