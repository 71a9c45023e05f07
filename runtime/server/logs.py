"""The access log: one JSON object per request, beside the JSON logs of `workers/logs.py`.

Records carry method, path, status, sizes, duration, client and the request id (the one
sent back as `x-request-id`, so a client's complaint can be found) — no other header value and
never a body, so payloads and tokens cannot leak into logs. The access log is written directly (not
through `logging`) and flushed a few times a second, because at thousands of requests per
second a logging call per request is a measurable share of the frontend's CPU.
`configure_logging` is re-exported for the HTTP processes (serve, router).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from json.encoder import encode_basestring_ascii as _string
from typing import TextIO

from marfleet.runtime.server.http import Request, Response
from marfleet.runtime.server.request_ids import REQUEST_ID_HEADER
from marfleet.runtime.workers.logs import configure_logging

__all__ = ["AccessLog", "configure_logging"]


class AccessLog:
    FLUSH_INTERVAL_S = 0.25

    def __init__(
        self, stream: TextIO, port_name: str, *, on_status: Callable[[int], None] | None = None
    ) -> None:
        self._stream = stream
        self._api = _string(port_name)
        self._on_status = on_status
        self._flush_scheduled = False

    def __call__(self, request: Request, response: Response) -> None:
        if self._on_status is not None:
            self._on_status(response.status)
        # what json.dumps of the record writes, byte for byte, at a third of its cost: the
        # strings go through json's own escaping, the numbers are ints and finite floats
        self._stream.write(
            f'{{"ts": {round(time.time(), 3)!r}, "logger": "marfleet.access", '
            f'"api": {self._api}, "method": {_string(request.method)}, '
            f'"path": {_string(request.path)}, "status": {response.status}, '
            f'"request_bytes": {len(request.body)}, "response_bytes": {len(response.body)}, '
            f'"duration_ms": {round((time.perf_counter() - request.received_at) * 1000, 3)!r}, '
            f'"client": {_string(request.client)}, '
            f'"request_id": {_string(request.headers.get(REQUEST_ID_HEADER, ""))}}}\n'
        )
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(self.FLUSH_INTERVAL_S, self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._stream.flush()
