"""TorchServe's request envelopes (`service_envelope`): a wrapper around a handler's `handle`.

TorchServe's worker wraps every model's entry point in the envelope that config.properties'
`service_envelope` names (`body`, `json`, `kserve`, `kservev2`; TorchServe 0.12 sets it for
every model, over anything an archive says), for every request of the model whatever API it
came through. The envelope turns the request rows into what a stock handler expects, and the
handler's results back into the protocol's answer. These are TorchServe 0.12's envelopes, rule
for rule, quirks included, so a handler sees the rows TorchServe would give it and a client gets
TorchServe's bytes:

- `kservev2`: the *first* request of a batch is read; each of its `inputs` becomes one row (its
  `data` reshaped to its `shape`; a BYTES input's data is its first element); the handler's
  results become `outputs` named after the inputs in order, flattened, with the datatype numpy
  infers; the answer carries the request's `id` (or the request id), the manifest's model name
  and version. One answer per batch: with a batch of several requests the count no longer
  matches (TorchServe's 503 "number of batch response mismatched").
- `kserve` (v1): the first request's `instances` are the rows; the answer is
  `{"predictions": results}` (`{"explanations": ...}` on the explain APIs).
- `json`: every request's `instances` (`{"b64": ...}` values decoded) are joined into one batch
  and split back, each request answered `{"predictions": [...]}` as a JSON string.
- `body`: each request's `data` or `body`, results unchanged.

marfleet uses these classes with or without TorchServe installed (as it uses its own built-in
handlers), so the answers do not depend on what the image has.
"""

from __future__ import annotations

import json
from base64 import b64decode
from itertools import chain
from typing import Any

import numpy as np
from marfleet.runtime.handlers.context import Context
from marfleet.runtime.handlers.errors import ModelLoadError
from marfleet.runtime.handlers.loader import HandleFn


class BaseEnvelope:
    """TorchServe's `BaseEnvelope`: parse the rows, call the handler, format its results."""

    def __init__(self, handle_fn: HandleFn) -> None:
        self._handle_fn = handle_fn
        self.context: Context | None = None

    def handle(self, data: Any, context: Context) -> Any:
        self.context = context
        if data:
            data = self.parse_input(data)
        results = self._handle_fn(data, context)
        if results:
            results = self.format_output(results)
        return results

    def parse_input(self, data: Any) -> Any:
        raise NotImplementedError

    def format_output(self, data: Any) -> Any:
        raise NotImplementedError

    def _explaining(self) -> bool:
        return self.context is not None and self.context.get_request_header(0, "explain") == "True"


class BodyEnvelope(BaseEnvelope):
    def parse_input(self, data: Any) -> Any:
        return [row.get("data") or row.get("body") for row in data]

    def format_output(self, data: Any) -> Any:
        return data


class JSONEnvelope(BaseEnvelope):
    def __init__(self, handle_fn: HandleFn) -> None:
        super().__init__(handle_fn)
        self._lengths: list[int] = []

    def parse_input(self, data: Any) -> Any:
        mini_batches = [self._from_json(row) for row in data]
        self._lengths = [len(mini_batch) for mini_batch in mini_batches]
        return list(chain.from_iterable(mini_batches))

    def format_output(self, data: Any) -> Any:
        outputs, cursor = [], 0
        for length in self._lengths:
            outputs.append(json.dumps({"predictions": data[cursor : cursor + length]}))
            cursor += length
        return outputs

    @staticmethod
    def _from_json(row: dict[str, Any]) -> Any:
        rows = (row.get("data") or row.get("body") or row)["instances"]
        if isinstance(rows[0], dict):
            for index, instance in enumerate(rows):
                if list(instance.keys()) == ["b64"]:
                    rows[index] = b64decode(instance["b64"])
                    continue
                for column, value in instance.items():
                    if isinstance(value, dict) and list(value.keys()) == ["b64"]:
                        instance[column] = b64decode(value["b64"])
        return rows


def _first_document(data: Any) -> Any:
    """The first request's JSON document (a JSON body arrives decoded; other bodies as bytes)."""
    document = data[0].get("data") or data[0].get("body")
    if isinstance(document, (bytes, bytearray)):
        document = json.loads(document.decode())
    return document


class KServeEnvelope(BaseEnvelope):
    def parse_input(self, data: Any) -> Any:
        return _first_document(data).get("instances")

    def format_output(self, data: Any) -> Any:
        return [{"explanations" if self._explaining() else "predictions": data}]


_DATATYPES = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
    "byte": "BYTES",
    "object": "BYTES",
    "U": "BYTES",
}


class KServev2Envelope(BaseEnvelope):
    """Keeps what it needs between the calls on the context, as TorchServe's does
    (`context.input_names`, `context.input_request_id`), where a handler may read it."""

    def parse_input(self, data: Any) -> Any:
        document = _first_document(data)
        names = []
        for tensor in document["inputs"]:
            if tensor["datatype"] == "BYTES":
                tensor["data"] = tensor["data"][0]
            else:
                tensor["data"] = np.array(tensor["data"]).reshape(tuple(tensor["shape"])).tolist()
            names.append(tensor["name"])
        context = self.context
        context.input_names = names  # type: ignore[union-attr]
        request_id = document.get("id")
        if request_id and request_id.strip():
            context.input_request_id = request_id  # type: ignore[union-attr]
        return document.get("inputs")

    def format_output(self, data: Any) -> Any:
        context = self.context
        assert context is not None
        request_id = getattr(context, "input_request_id", None)
        if request_id is not None:
            del context.input_request_id  # type: ignore[attr-defined]
        else:
            request_id = context.get_request_id(0)
        names = context.input_names  # type: ignore[attr-defined]
        del context.input_names  # type: ignore[attr-defined]
        model = (context.manifest or {}).get("model", {})
        response = {
            "id": request_id,
            "model_name": model.get("modelName"),
            "model_version": model.get("modelVersion"),
            "outputs": [_tensor(item, names[index]) for index, item in enumerate(data)],
        }
        return [response]


def _tensor(value: Any, name: str) -> dict[str, Any]:
    flat = np.array(value).flatten()
    dtype = str(flat.dtype)
    return {
        "name": name,
        "datatype": _DATATYPES[dtype if dtype in _DATATYPES else flat.dtype.kind],
        "data": flat.tolist(),
        "shape": list(flat.shape),
    }


ENVELOPES: dict[str, type[BaseEnvelope]] = {
    "body": BodyEnvelope,
    "json": JSONEnvelope,
    "kserve": KServeEnvelope,
    "kservev2": KServev2Envelope,
}


def wrap(envelope: str | None, handle: HandleFn) -> HandleFn:
    """`handle` inside the named envelope (unchanged for None or ""), as TorchServe's loader."""
    if not envelope:
        return handle
    try:
        return ENVELOPES[envelope](handle).handle
    except KeyError:
        raise ModelLoadError(
            f"service_envelope {envelope!r} is not one of TorchServe's envelopes "
            f"({', '.join(ENVELOPES)})"
        ) from None
