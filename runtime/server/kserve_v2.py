"""KServe v2 (Open Inference Protocol) tensors: validate requests, shape responses.

Requests are checked in the frontend so a malformed one is a 400 that names the input at fault
before it costs a worker anything: every input needs a name, a known datatype and a shape whose
element count matches its data (JSON `data`, or bytes from the binary tensor extension that
`tritonclient` uses by default). The handler then gets what TorchServe gives a handler on its
`/v2/models/{m}/infer` route — the request object `{"id", "inputs": [...], "parameters"}` as
JSON — with binary inputs turned into JSON `data` so it never has to know the extension.

Tensor data is checked as strictly as shapes: a shape whose element count does not fit in int64
is refused (it cannot be allocated, and a wrapped product could pass as 0), numeric tensors take
numbers only (integer and BOOL tensors: whole numbers and booleans; FP tensors: any number),
nested `data` lists must be regular (no ragged rows), and BYTES elements in the binary extension
must be as long as their length prefix says. Non-finite floats follow one rule: JSON `NaN`,
`Infinity` and `-Infinity` (Python's extension of JSON, which TorchServe's handlers also accept)
are allowed in FP16/FP32/FP64 tensors only, binary FP data carries IEEE values as they are, and
responses write non-finite floats as those same literals.

A handler may answer with a full v2 response (a dict with `outputs`) or with a plain value
(list, number, string); a plain value becomes one output tensor whose shape and datatype are
inferred. Outputs the client asked for in binary come back in the binary extension's layout.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from marfleet.runtime.server.jsondepth import DEFAULT_MAX_DEPTH, TooDeep, check_depth

HEADER_LENGTH = "inference-header-content-length"

_NUMPY_TYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
DATATYPES = (*_NUMPY_TYPES, "BYTES")
_INT64_MAX = 2**63 - 1
# numpy kinds of JSON data each datatype accepts: b bool, i/u integer, f float
_ACCEPTED_KINDS = {name: "fiub" if name.startswith("FP") else "iub" for name in _NUMPY_TYPES}


def numpy_type(datatype: str) -> Any:
    """The numpy dtype of a numeric v2 datatype (KeyError for BYTES and unknown names)."""
    return _NUMPY_TYPES[datatype]


class V2Error(ValueError):
    """The request breaks the v2 protocol; the message says which input and how."""


@dataclass
class V2Request:
    document: dict[str, Any]  # the request with every input's data as JSON
    binary_outputs: dict[str, bool] = field(default_factory=dict)
    default_binary: bool = False


def parse_request(
    body: bytes, headers: Mapping[str, str], *, max_depth: int = DEFAULT_MAX_DEPTH
) -> V2Request:
    """A v2 request from its HTTP body: JSON (at most `max_depth` levels deep), then the binary
    extension's bytes if any."""
    json_part, binary = _split_binary(body, headers)
    try:
        check_depth(json_part, max_depth)
        document = json.loads(json_part)
    except TooDeep as error:
        raise V2Error(str(error)) from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise V2Error(f"the request body is not valid JSON: {error}") from None
    return validate(document, binary)


def validate(document: object, binary: bytes = b"") -> V2Request:
    """Check a decoded v2 request; inputs given as `binary_data_size` bytes of `binary` (the
    HTTP binary extension, gRPC's raw_input_contents) get their values as JSON `data`."""
    if not isinstance(document, dict):
        raise V2Error('the request body must be a JSON object with an "inputs" list')
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise V2Error('the request needs a non-empty "inputs" list')
    offset = 0
    for index, tensor in enumerate(inputs):
        offset = _check_input(index, tensor, binary, offset)
    if offset != len(binary):
        raise V2Error(
            f"{len(binary) - offset} bytes of binary data follow the JSON header "
            "that no input claims (check binary_data_size)"
        )
    request = V2Request(document)
    parameters = document.get("parameters") or {}
    request.default_binary = bool(
        isinstance(parameters, dict) and parameters.get("binary_data_output")
    )
    for output in document.get("outputs") or []:
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise V2Error('every entry of "outputs" needs a "name"')
        output_parameters = output.get("parameters") or {}
        request.binary_outputs[output["name"]] = bool(
            output_parameters.get("binary_data", request.default_binary)
        )
    return request


def _split_binary(body: bytes, headers: Mapping[str, str]) -> tuple[bytes, bytes]:
    declared = headers.get(HEADER_LENGTH)
    if declared is None:
        return body, b""
    if not declared.isdigit() or int(declared) > len(body):
        raise V2Error(
            f"{HEADER_LENGTH}: {declared!r} is not a length within the {len(body)}-byte body"
        )
    length = int(declared)
    return body[:length], body[length:]


def _check_input(index: int, tensor: object, binary: bytes, offset: int) -> int:
    if not isinstance(tensor, dict):
        raise V2Error(f"inputs[{index}] must be an object with name, shape, datatype and data")
    name = tensor.get("name")
    if not isinstance(name, str) or not name:
        raise V2Error(f"inputs[{index}] has no name")
    datatype = tensor.get("datatype")
    if datatype not in DATATYPES:
        raise V2Error(f"input {name!r}: datatype {datatype!r} is not one of {', '.join(DATATYPES)}")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise V2Error(f"input {name!r}: shape must be a list of non-negative integers")
    expected = math.prod(shape)
    if expected > _INT64_MAX:
        raise V2Error(f"input {name!r}: shape {shape} has more elements than int64 can count")
    parameters = tensor.get("parameters") or {}
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise V2Error(f"input {name!r}: binary_data_size {size!r} exceeds the binary data sent")
        tensor["data"] = _binary_to_list(name, datatype, binary[offset : offset + size], expected)
        del parameters["binary_data_size"]
        return offset + size
    if "data" not in tensor:
        raise V2Error(f"input {name!r} has no data")
    count = _checked_count(name, datatype, tensor["data"])
    if count != expected:
        raise V2Error(f"input {name!r}: shape {shape} needs {expected} elements, data has {count}")
    return offset


def _checked_count(name: str, datatype: str, data: object) -> int:
    """How many elements `data` holds, refusing ragged lists and values of the wrong kind."""
    ragged = f"input {name!r}: data is a ragged nested list; every row must have the same length"
    if not isinstance(data, list):
        data = [data]
    try:
        array = np.asarray(data, dtype=object if datatype == "BYTES" else None)
    except ValueError:
        raise V2Error(ragged) from None
    if datatype == "BYTES":
        if any(isinstance(item, list) for item in array.flat):
            raise V2Error(ragged)
        return int(array.size)
    if array.size and array.dtype.kind not in _ACCEPTED_KINDS[datatype]:
        wanted = "numbers" if datatype.startswith("FP") else "whole numbers or booleans"
        raise V2Error(f"input {name!r}: {datatype} data must be {wanted}, got {_kind(array)}")
    return int(array.size)


def _kind(array: np.ndarray) -> str:
    if array.dtype.kind in "US":
        return "strings"
    if array.dtype.kind == "f":
        return "fractional numbers"
    return "mixed or non-numeric values"


def _binary_to_list(name: str, datatype: str, raw: bytes, expected: int) -> list[Any]:
    if datatype == "BYTES":
        items: list[Any] = []
        position = 0
        while position < len(raw):
            if position + 4 > len(raw):
                raise V2Error(f"input {name!r}: truncated BYTES element length")
            length = int.from_bytes(raw[position : position + 4], "little")
            position += 4
            if position + length > len(raw):
                raise V2Error(
                    f"input {name!r}: truncated BYTES element ({length} bytes announced, "
                    f"{len(raw) - position} left)"
                )
            items.append(raw[position : position + length].decode("utf-8", "replace"))
            position += length
        values = items
    else:
        dtype = np.dtype(_NUMPY_TYPES[datatype])
        if len(raw) != expected * dtype.itemsize:
            raise V2Error(
                f"input {name!r}: {len(raw)} bytes of {datatype} do not make {expected} elements"
            )
        values = np.frombuffer(raw, dtype=dtype).tolist()
    if len(values) != expected:
        raise V2Error(f"input {name!r}: shape needs {expected} elements, data has {len(values)}")
    return values


def declared_tensors(model_config: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The tensors an archive's model-config.yaml declares for v2 model metadata: its `inputs`
    and `outputs` lists, each entry `{name, datatype, shape}` (-1: a dimension of any size).
    TorchServe ignores both keys, so the same archive still loads there. V2Error names the
    entry at fault."""
    declared: dict[str, list[dict[str, Any]]] = {}
    for key in ("inputs", "outputs"):
        entries = model_config.get(key)
        if entries is None:
            declared[key] = []
            continue
        if not isinstance(entries, list):
            raise V2Error(f"model-config.yaml {key} must be a list of {{name, datatype, shape}}")
        declared[key] = [_tensor_metadata(f"{key}[{i}]", e) for i, e in enumerate(entries)]
    return declared


def _tensor_metadata(where: str, entry: object) -> dict[str, Any]:
    if not isinstance(entry, dict) or set(entry) != {"name", "datatype", "shape"}:
        raise V2Error(f"model-config.yaml {where} must have exactly name, datatype and shape")
    name, datatype, shape = entry["name"], entry["datatype"], entry["shape"]
    if not isinstance(name, str) or not name:
        raise V2Error(f"model-config.yaml {where}: name must be a non-empty string")
    if datatype not in DATATYPES:
        raise V2Error(
            f"model-config.yaml {where}: datatype {datatype!r} is not one of {', '.join(DATATYPES)}"
        )
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape
    ):
        raise V2Error(f"model-config.yaml {where}: shape must be a list of integers, -1 or more")
    return {"name": name, "datatype": datatype, "shape": shape}


def response_document(
    request: V2Request, model: str, version: str, handler_body: bytes
) -> dict[str, Any]:
    """The v2 response for a handler's successful answer, every tensor's data as a list."""
    try:
        value = json.loads(handler_body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        value = handler_body.decode("utf-8", "replace")
    if isinstance(value, dict) and isinstance(value.get("outputs"), list):
        response = dict(value)
    else:
        requested = list(request.binary_outputs)
        response = {"outputs": [_infer_tensor(requested[0] if requested else "output-0", value)]}
    response.setdefault("model_name", model)
    response.setdefault("model_version", version)
    request_id = request.document.get("id")
    if request_id is not None:
        response.setdefault("id", request_id)
    return response


def _infer_tensor(name: str, value: Any) -> dict[str, Any]:
    array = np.asarray(value)
    if array.dtype.kind in "US" or array.dtype == object:
        datatype = "BYTES"
        data: list[Any] = [str(item) for item in array.reshape(-1).tolist()]
    else:
        datatype = {"b": "BOOL", "i": "INT64", "u": "UINT64", "f": "FP32"}.get(
            array.dtype.kind, "FP64"
        )
        data = array.reshape(-1).tolist()
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}


def encode_json(response: dict[str, Any], request: V2Request) -> tuple[bytes, dict[str, str]]:
    """The HTTP body (and headers) of a v2 response: JSON, outputs asked for in binary after it."""
    chunks: list[bytes] = []
    for output in response.get("outputs", []):
        wanted = request.binary_outputs.get(output.get("name"), request.default_binary)
        if not wanted or output.get("datatype") not in _NUMPY_TYPES:
            continue
        raw = np.asarray(output.pop("data"), dtype=_NUMPY_TYPES[output["datatype"]]).tobytes()
        output.setdefault("parameters", {})["binary_data_size"] = len(raw)
        chunks.append(raw)
    header = json.dumps(response).encode()
    if not chunks:
        return header, {}
    return header + b"".join(chunks), {HEADER_LENGTH: str(len(header))}
