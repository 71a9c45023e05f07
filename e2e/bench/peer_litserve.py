"""LitServe's API for the peer benchmark (`peer_apps`), at module level because LitServe pickles
each LitAPI into the worker process it spawns. Importable only in the peer venv."""

from __future__ import annotations

import base64
from typing import Any

import litserve as ls

from e2e.bench.peer_apps import Predictor, Weights


class BenchAPI(ls.LitAPI):
    """One model: `{"input": row}` or `{"image": base64 JPEG}` in, `{"output": ...}` out."""

    def __init__(self, model: str, max_batch: int, delay: float, weights: Weights) -> None:
        super().__init__(max_batch_size=max_batch, batch_timeout=delay, api_path=f"/{model}")
        self.model, self.weights, self.batching = model, weights, max_batch > 1

    def setup(self, device: str) -> None:
        self.predictor = Predictor(self.model, self.weights)

    # unannotated on purpose: LitServe turns the annotation into FastAPI's body model, and
    # without one it parses the JSON body itself, as its examples do
    def decode_request(self, request):  # type: ignore[no-untyped-def]
        if self.predictor.image:
            return base64.b64decode(request["image"])
        return request["input"]

    def predict(self, items: Any) -> Any:
        # LitServe hands predict a list of decoded inputs only when it batches
        if self.batching:
            return self.predictor.predict(items)
        return self.predictor.predict([items])[0]

    def encode_response(self, output: Any) -> dict[str, Any]:
        return {"output": output}
