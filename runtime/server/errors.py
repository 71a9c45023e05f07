"""TorchServe's error body — `{"code": N, "type": "...", "message": "..."}` — and the exception
API handlers raise to produce it, so every endpoint fails the same way TorchServe does.

KServe's protocols (v1, and v2: the Open Inference Protocol) put an error's reason in
`"error"` instead, and their clients read only that (tritonclient's HTTP client reports a
decoding failure when it is missing); `kserve_errors` adds it on the KServe paths, so one body
serves both kinds of client."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace

from marfleet.runtime.server.http import Handler, Request, Response, StreamedResponse

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


_TORCHSERVE_ERROR_KEYS = frozenset({"code", "type", "message"})
_MAX_REWRITTEN_BODY = 1 << 16  # TorchServe's error documents are small; bigger is someone else's


def speaks_kserve(path: str) -> bool:
    """Whether `path` is one of KServe's (v1 `/v1/...`, v2 `/v2` and `/v2/...`)."""
    return path.startswith(("/v1/", "/v2/")) or path == "/v2"


def with_kserve_error(response: Response) -> Response:
    """An error answer in TorchServe's shape, with KServe's `"error"` added (the same text as
    `message`); any other answer unchanged, a handler's own error document included."""
    if (
        response.status < 400
        or isinstance(response, StreamedResponse)
        or not (response.content_type or "").startswith("application/json")
        or len(response.body) > _MAX_REWRITTEN_BODY
    ):
        return response
    try:
        document = json.loads(response.body)
    except ValueError:
        return response
    if not isinstance(document, dict) or document.keys() != _TORCHSERVE_ERROR_KEYS:
        return response
    return replace(response, body=pretty_json({**document, "error": document["message"]}))


def kserve_errors(app: Handler) -> Handler:
    """`app`, whose error answers on KServe's paths also carry `"error"`."""

    async def handle(request: Request) -> Response:
        response = await app(request)
        return with_kserve_error(response) if speaks_kserve(request.path) else response

    return handle
