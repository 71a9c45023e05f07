"""Requests into handler rows, handler results into response bodies, exactly as TorchServe.

Observed on TorchServe 0.12 (and checked by the differential tests): a plain body becomes the
row `{"body": value}`, decoded to Python objects for `application/json` and to `str` for
`text/*`, bytes otherwise; a form becomes one key per field, bytes; query-string parameters do
not reach the row. The handler sees, through `get_all_request_header`, one `{"content-type":
...}` entry per row key, the request headers, and `explain` ("True" on the explanations API).
A result is sent raw when bytes, UTF-8 when str, `torch.save`d when a tensor and as JSON with
two-space indents otherwise; an error body is TorchServe's `{"code", "type", "message"}`.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import torch
from marfleet.runtime.handlers.messages import InferenceRequest

logger = logging.getLogger(__name__)

ERROR_TYPE = "InternalServerException"


def mime_type(content_type: str) -> str:
    """`application/json; charset=utf-8` -> `application/json`."""
    return content_type.split(";", 1)[0].strip().lower()


def decode_body(body: bytes, content_type: str) -> Any:
    """The value TorchServe puts in the row for a body of this content type."""
    kind = mime_type(content_type)
    try:
        if kind == "application/json":
            return json.loads(body)
        if kind.startswith("text"):
            return body.decode("utf-8")
    except (UnicodeDecodeError, json.JSONDecodeError):
        logger.warning(
            "request body kept as bytes: it does not decode as its content type says",
            extra={"content_type": kind},
        )
    return body


def handler_row(request: InferenceRequest) -> dict[str, Any]:
    if request.form is not None:
        return dict(request.form)
    return {"body": decode_body(request.body, request.content_type)}


def request_properties(request: InferenceRequest, *, explain: bool | None) -> dict[str, Any]:
    """What `context.get_all_request_header(idx)` returns for this request (no `explain` for
    None: TorchServe's gRPC ModelInfer sets none)."""
    properties: dict[str, Any]
    if request.form is not None:
        properties = {name: {"content-type": ""} for name in request.form}
    else:
        properties = {"body": {"content-type": mime_type(request.content_type)}}
    properties.update(request.headers)
    if explain is not None:
        properties["explain"] = "True" if explain else "False"
    return properties


def encode_output(value: Any) -> bytes:
    """One handler result as response bytes; TypeError when it cannot be serialised."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, torch.Tensor):
        buffer = io.BytesIO()
        torch.save(value, buffer)
        return buffer.getvalue()
    return json.dumps(value, indent=2).encode("utf-8")


def error_body(code: int, message: str) -> bytes:
    """TorchServe's error document, byte for byte (two-space indents, a final newline)."""
    document = {"code": code, "type": ERROR_TYPE, "message": message}
    return (json.dumps(document, indent=2) + "\n").encode()
