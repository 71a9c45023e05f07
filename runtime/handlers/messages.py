"""The request and result records that cross between the worker and the handler layer.

They are plain data with no HTTP types in them, so the worker processes and the server never
import each other's code (see the contract in service.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InferenceRequest:
    request_id: str
    body: bytes  # the raw request body (b"" for none)
    content_type: str  # the request's Content-Type ("" when absent)
    headers: dict[str, str]  # header names lower-cased
    parameters: dict[str, str]  # query-string parameters
    form: dict[str, bytes] | None = None  # multipart/form fields when the server parsed a form


@dataclass
class InferenceResult:
    status: int  # 200, or the error status of the batch contract
    body: bytes
    content_type: str  # "" when the handler set none (TorchServe then sends no Content-Type)
    headers: dict[str, str]  # set by the handler via context.set_response_header
