"""Test handler for the TorchScript TinyMLP: JSON rows of 4 numbers in, 3 scores out.

It also accepts the KServe v2 request object ({"inputs": [{"data": ...}]}) that marfleet and
TorchServe hand a handler on the v2 infer route.
"""

import json
from typing import Any

import torch
from ts.torch_handler.base_handler import BaseHandler


class MLPHandler(BaseHandler):
    def preprocess(self, data: list[dict[str, Any]]) -> torch.Tensor:
        rows = []
        for row in data:
            body = row.get("body", row.get("data"))
            if isinstance(body, (bytes, bytearray)):  # gRPC inputs reach handlers as bytes
                body = json.loads(body)
            if isinstance(body, dict) and "inputs" in body:
                body = body["inputs"][0]["data"]
            rows.append(torch.as_tensor(body, dtype=torch.float32).reshape(1, 4))
        return torch.cat(rows)

    def postprocess(self, data: torch.Tensor) -> list[Any]:
        return [row.tolist() for row in data]
