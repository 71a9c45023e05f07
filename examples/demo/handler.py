"""The demo's handler, written against TorchServe's own `ts` package: it runs unchanged in
TorchServe and in marfleet.

Each request body is JSON, either `{"features": [f1, f2, f3, f4]}` or the bare list; each answer
names the most likely class, its probability and the model version that computed it, so a
client behind a canary split can see which version served it.
"""

import json
from typing import Any

import torch
from ts.torch_handler.base_handler import BaseHandler


class FeatureClassifier(BaseHandler):
    def preprocess(self, data: list[dict[str, Any]]) -> torch.Tensor:
        rows = []
        for row in data:
            value = row.get("data") or row.get("body")
            if isinstance(value, (bytes, bytearray, str)):
                value = json.loads(value)
            rows.append(value["features"] if isinstance(value, dict) else value)
        return torch.tensor(rows, dtype=torch.float32)

    def postprocess(self, data: torch.Tensor) -> list[dict[str, Any]]:
        version = self.manifest["model"]["modelVersion"]
        labels = self.mapping or {}
        answers = []
        for scores in data.softmax(dim=1):
            best = int(scores.argmax())
            answers.append(
                {
                    "label": labels.get(str(best), str(best)),
                    "probability": round(float(scores[best]), 3),
                    "model_version": version,
                }
            )
        return answers
