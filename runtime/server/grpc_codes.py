"""HTTP statuses ↔ gRPC status codes, one table for the runtime's gRPC services and the router.

The data plane decides in HTTP statuses (TorchServe's vocabulary); the gRPC services answer the
code for that status, and the router, which measures answers by status class, reads a gRPC
code back as the status it stands for. Only grpcio is imported, so the router can use it.
"""

from __future__ import annotations

import grpc

_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.ALREADY_EXISTS,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
    507: grpc.StatusCode.RESOURCE_EXHAUSTED,
}
_STATUSES: dict[grpc.StatusCode, int] = {grpc.StatusCode.OK: 200}
for _status, _code in _CODES.items():
    _STATUSES.setdefault(_code, _status)


def status_code(http_status: int) -> grpc.StatusCode:
    """The gRPC code for an HTTP status (UNKNOWN for one without a counterpart)."""
    return _CODES.get(http_status, grpc.StatusCode.UNKNOWN)


def http_status(code: grpc.StatusCode) -> int:
    """The HTTP status a gRPC code stands for (500 for one without a counterpart)."""
    return _STATUSES.get(code, 500)
