"""Structured logs: one JSON object per line, for the server's own logs and its access log.

Access-log records carry method, path, status, sizes, duration and client — never a header
value or a body, so payloads and tokens cannot leak into logs. The access log is written
directly (not through `logging`) and flushed a few times a second, because at thousands of
requests per second a logging call per request is a measurable share of the frontend's CPU.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO

from marfleet.runtime.server.http import Request, Response

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                document[key] = value
        if record.exc_info:
            document["error"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


def configure_logging(level: int = logging.INFO, stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class AccessLog:
    FLUSH_INTERVAL_S = 0.25

    def __init__(
        self, stream: TextIO, port_name: str, *, on_status: Callable[[int], None] | None = None
    ) -> None:
        self._stream = stream
        self._port = port_name
        self._on_status = on_status
        self._flush_scheduled = False

    def __call__(self, request: Request, response: Response) -> None:
        if self._on_status is not None:
            self._on_status(response.status)
        record = {
            "ts": round(time.time(), 3),
            "logger": "marfleet.access",
            "api": self._port,
            "method": request.method,
            "path": request.path,
            "status": response.status,
            "request_bytes": len(request.body),
            "response_bytes": len(response.body),
            "duration_ms": round((time.perf_counter() - request.received_at) * 1000, 3),
            "client": request.client,
        }
        self._stream.write(json.dumps(record) + "\n")
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(self.FLUSH_INTERVAL_S, self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._stream.flush()
