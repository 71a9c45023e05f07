"""Handler files written as TorchServe users write them (against the `ts` package), for tests.

They import only from `ts`, never from marfleet, so the same file runs in real TorchServe, in
marfleet with TorchServe installed, and in marfleet with its `ts` compatibility package.
`write_handler(directory, name)` saves one as `<name>.py` for the archivers to pick up.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# TorchScript MLP (tests.models.TinyMLP) behind a BaseHandler subclass with custom hooks.
MLP_HANDLER = """
import json

import torch
from ts.torch_handler.base_handler import BaseHandler
from ts.utils.util import PredictionException


class MLPHandler(BaseHandler):
    def preprocess(self, data):
        rows = []
        for row in data:
            value = row.get("data") or row.get("body")
            if not isinstance(value, list) or len(value) != 4:
                raise PredictionException("each request must be a JSON list of 4 numbers", 400)
            rows.append(value)
        return torch.tensor(rows, dtype=torch.float32)

    def postprocess(self, data):
        self.context.metrics.add_counter("MLPRows", len(data))
        rows = data.tolist()
        return [{"scores": row, "best": max(range(3), key=row.__getitem__)} for row in rows]

    def describe_handle(self):
        return json.dumps({"inputs": 4, "classes": 3})
"""

# The built-in image classifier with a different answer shape (override of postprocess).
TOP_TWO_HANDLER = """
from ts.torch_handler.image_classifier import ImageClassifier


class TopTwo(ImageClassifier):
    topk = 2

    def postprocess(self, data):
        ranked = super().postprocess(data)
        return [{"best": next(iter(labels)), "top2": labels} for labels in ranked]
"""

# TorchServe's MNIST example: ImageClassifier with its own 1-channel transform (grayscale in).
# The file of examples/mnist, which the real-node scenario (e2e/scenario) serves as well.
MNIST_HANDLER = (REPO / "examples" / "mnist" / "mnist_handler.py").read_text()

# A module:function handler that loads a TorchScript model itself.
FUNCTION_HANDLER = """
import os

import torch
from ts.context import Context
from ts.utils.util import PredictionException

_model = None


def infer(data, context: Context):
    global _model
    if data is None:
        properties = context.system_properties
        weights = os.path.join(properties["model_dir"], context.manifest["model"]["serializedFile"])
        _model = torch.jit.load(weights)
        return None
    values = [row.get("data") or row.get("body") for row in data]
    if any(not isinstance(value, list) for value in values):
        raise PredictionException("send a JSON list", 422)
    with torch.no_grad():
        scores = _model(torch.tensor(values, dtype=torch.float32))
    for index in range(len(data)):
        context.set_response_header(index, "X-Model", context.model_name)
    return [{"sum": float(row.sum())} for row in scores]
"""

# Shows what a handler receives: the row keys and value types, some headers, the request id.
ECHO_HANDLER = """
def _describe(value):
    if isinstance(value, (bytes, bytearray)):
        return ["bytes", bytes(value).decode("latin-1")]
    return [type(value).__name__, value]


def handle(data, context):
    if data is None:
        return None
    return [
        {
            "row": {key: _describe(value) for key, value in row.items()},
            "custom_header": context.get_request_header(index, "X-Custom"),
            "explain": context.get_request_header(index, "explain"),
            "body_content_type": context.get_all_request_header(index).get("body"),
        }
        for index, row in enumerate(data)
    ]
"""

# Breaks the batch contract on request: the first row's text body picks how.
CONTRACT_HANDLER = """
from ts.utils.util import PredictionException


def handle(data, context):
    if data is None:
        return None
    mode = data[0].get("body")
    if isinstance(mode, (bytes, bytearray)):
        mode = mode.decode()
    if mode == "prediction-exception":
        raise PredictionException("the input is not a cat", 422)
    if mode == "memory":
        raise MemoryError()
    if mode == "cuda":
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    if mode == "too-many":
        return [1] * (len(data) + 1)
    if mode == "not-a-list":
        return "oops"
    if mode == "teapot":
        context.set_response_status(418, "short and stout", 0)
        context.set_response_header(0, "X-Pot", "tea")
        context.set_response_content_type(0, "text/plain")
        return ["I am a teapot"]
    return [{"ok": True} for _ in data]
"""

# Rows as the handler gets them (through a service_envelope, each v2 input is a row), the explain
# flag, and a handler's own metrics of each kind and API TorchServe 0.12 offers.
PROBE_HANDLER = """
from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes


def handle(data, context):
    if data is None:
        return None
    metrics = context.metrics
    metrics.add_counter("ProbeRows", len(data), None, [Dimension("Kind", "rows")])
    metrics.add_time("ProbeTime", 12.5, None, "ms", [Dimension("Kind", "time")])
    metrics.add_size("ProbeSize", 3.0, None, "MB")
    metrics.add_percent("ProbePercent", 42.0)
    metrics.add_metric("ProbeMetric", 2, "count", None, [Dimension("Kind", "metric")])
    histogram = metrics.add_metric_to_cache(
        "ProbeHistogram", "ms", ["Kind"], MetricTypes.HISTOGRAM
    )
    histogram.add_or_update(7.0, ["histogram"])
    gauge = metrics.add_metric_to_cache("ProbeGauge", "count", ["Kind"], MetricTypes.GAUGE)
    gauge.add_or_update(5, ["gauge"])
    explain = context.get_request_header(0, "explain")
    return [{"row": row, "explain": explain} for row in data]
"""


def write_handler(directory: Path, name: str, source: str) -> Path:
    path = directory / f"{name}.py"
    path.write_text(source.lstrip())
    return path
