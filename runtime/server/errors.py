"""TorchServe's error body — `{"code": N, "type": "...", "message": "..."}` — and the exception
API handlers raise to produce it, so every endpoint fails the same way TorchServe does."""

from __future__ import annotations

import json
from collections.abc import Mapping

from marfleet.runtime.server.http import Response

_DEFAULT_TYPES = {
    400: "BadRequestException",
    404: "ResourceNotFoundException",
    405: "MethodNotAllowedException",
    409: "ConflictStatusException",
    413: "RequestEntityTooLargeException",
    431: "RequestHeaderFieldsTooLargeException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
    507: "InsufficientStorageException",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _DEFAULT_TYPES.get(status, "ServiceException")
        self.headers = headers

    def response(self) -> Response:
        return error_response(self.status, self.message, type=self.type, headers=self.headers)


def error_body(status: int, message: str, type: str | None = None) -> bytes:
    error_type = type or _DEFAULT_TYPES.get(status, "ServiceException")
    return pretty_json({"code": status, "type": error_type, "message": message})


def pretty_json(payload: object) -> bytes:
    """JSON pretty-printed with two spaces and ended by a newline, byte for byte as TorchServe
    writes the answers it makes itself (a handler's answer is sent as the handler gave it)."""
    return (json.dumps(payload, indent=2) + "\n").encode()


def error_response(
    status: int,
    message: str,
    *,
    type: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    return Response(status, error_body(status, message, type), "application/json", headers)


def json_response(payload: object, status: int = 200) -> Response:
    """A JSON answer the server makes itself, written as TorchServe writes one (pretty_json)."""
    return Response(status, pretty_json(payload), "application/json")
