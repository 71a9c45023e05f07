"""A small, fast HTTP/1.1 server core: asyncio Protocol + httptools parser (+ uvloop when present).

Why this shape: the frontend's job is to move bytes between sockets and worker processes with as
little Python per request as possible. Measured on this project's 2-core machine (see
docs/benchmarks.md, `e2e/bench/http_candidates.py`), a Protocol that feeds httptools directly
answers a small JSON request in about half the server CPU time of uvicorn+starlette or aiohttp
(both also on uvloop), because there is no ASGI message translation, no middleware stack and no
per-request object graph. What this module gives up (HTTP/2, websockets, streaming request
bodies) the TorchServe and KServe HTTP APIs do not use.

This module knows nothing about models: it parses requests, enforces the body-size limit, keeps
connections alive, cancels the handler when the client goes away (so queued work for it is
dropped), writes responses, and shuts down gracefully. The router (`routing.py`) and the API
modules sit on top; `marfleet router` reuses the same core.

A handler whose answer's end is not known yet returns a `StreamedResponse`: its `chunks` are
written with chunked transfer encoding as they arrive, the writer waits while the client reads
slowly (so the producer is paused, not buffered), and when the client goes away the chunks are
closed, which stops whatever produces them. The model server streams a handler's intermediate
responses this way, and the router relays an upstream's streamed answer through it.

    server = HttpServer(app, HttpLimits(max_body_bytes=6_553_500), error_response=render)
    await server.start("127.0.0.1", 8080)
    ...
    server.begin_shutdown(); await server.wait_closed(timeout=30)
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Protocol, cast
from urllib.parse import parse_qsl, unquote

import httptools


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query_string: str
    headers: dict[str, str]  # names lower-cased; repeated headers joined with ", "
    body: bytes
    client: str
    received_at: float  # time.perf_counter() when the last byte arrived
    params: dict[str, str] = field(default_factory=dict)  # filled by the router
    _query: dict[str, str] | None = None

    @property
    def query(self) -> dict[str, str]:
        """Query parameters; the first value of a repeated name wins, as in TorchServe."""
        if self._query is None:
            parsed: dict[str, str] = {}
            for key, value in parse_qsl(self.query_string, keep_blank_values=True):
                parsed.setdefault(key, value)
            self._query = parsed
        return self._query


@dataclass(slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str | None = "application/json"
    headers: Mapping[str, str] | None = None


class Chunks(Protocol):
    """An async iterator of body parts; `close()` stops its producer (the client left)."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    def close(self) -> None: ...


@dataclass(slots=True)
class StreamedResponse(Response):
    """A response whose body arrives as `chunks`; `finished(ok)` runs once it has been sent
    (`ok` is False when the client left or the chunks broke off, so the body was cut)."""

    chunks: Chunks | None = None
    finished: Callable[[bool], None] | None = None


Handler = Callable[[Request], Awaitable[Response]]
ErrorRenderer = Callable[[int, str], Response]
CompletionHook = Callable[[Request, Response], None]


@dataclass(frozen=True)
class HttpLimits:
    max_body_bytes: int = 6_553_500
    max_header_bytes: int = 64 * 1024
    keepalive_timeout: float = 75.0


_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
_DIRECT_WRITE_BYTES = 64 * 1024


class _DateHeader:
    """`Date:` changes once a second; format it once a second, not once a request."""

    def __init__(self) -> None:
        self._second = 0
        self._value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = b"date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._value


_date = _DateHeader()


def encode_head(response: Response, *, keep_alive: bool) -> bytes:
    """Status line and headers of `response`, ready for the socket."""
    reason = _REASONS.get(response.status, b"")
    parts = [
        b"HTTP/1.1 %d %s\r\n" % (response.status, reason),
        _date.get(),
        b"content-length: %d\r\n" % len(response.body),
    ]
    if response.content_type:
        parts.append(b"content-type: " + response.content_type.encode("latin-1") + b"\r\n")
    if response.headers:
        for name, value in response.headers.items():
            parts.append(f"{name}: {value}\r\n".encode("latin-1"))
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


class _Connection(asyncio.Protocol):
    """One client connection: parses requests and answers them in order (pipelining safe)."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._client = ""
        self._url = b""
        self._header_names: list[bytes] = []
        self._header_values: list[bytes] = []
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_size = 0
        self._rejecting = False
        self._pending: deque[tuple[Request, bool]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._writable: asyncio.Event | None = None  # made by the first pause_writing()
        self.closing = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self._client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "")
        self._server.connections.add(self)
        self._arm_idle_timer()

    def data_received(self, data: bytes) -> None:
        if self._rejecting:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(400, "Protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            self._reject(400, f"Malformed HTTP request: {exc}")

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.Event()
        self._writable.clear()

    def resume_writing(self) -> None:
        if self._writable is not None:
            self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._transport = None
        if self._writable is not None:
            self._writable.set()
        self._cancel_idle_timer()
        self._pending.clear()
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the client is gone: drop its queued work
        self._server.connection_closed()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._cancel_idle_timer()
        self._url = b""
        self._header_names = []
        self._header_values = []
        self._body = []
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_names.append(name)
        self._header_values.append(value)

    def on_headers_complete(self) -> None:
        headers: dict[str, str] = {}
        size = 0
        for raw_name, raw_value in zip(self._header_names, self._header_values, strict=True):
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            size += len(raw_name) + len(raw_value)
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        self._headers = headers
        limits = self._server.limits
        if size > limits.max_header_bytes:
            self._reject(431, f"Request headers exceed {limits.max_header_bytes} bytes")
            return
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limits.max_body_bytes:
            self._reject(413, self._too_large_message())
            return
        if headers.get("expect", "").lower() == "100-continue" and self._transport is not None:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self._rejecting:
            return
        self._body_size += len(body)
        if self._body_size > self._server.limits.max_body_bytes:
            self._reject(413, self._too_large_message())
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._rejecting:
            return
        parsed = httptools.parse_url(self._url)
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        request = Request(
            method=self._parser.get_method().decode("ascii"),
            path=unquote(parsed.path.decode("latin-1")),
            query_string=(parsed.query or b"").decode("latin-1"),
            headers=self._headers,
            body=body,
            client=self._client,
            received_at=time.perf_counter(),
        )
        self._body = []
        self._pending.append((request, self._parser.should_keep_alive()))
        if self._task is None:
            self._start_next()
        elif len(self._pending) > 1 and self._transport is not None:
            self._transport.pause_reading()  # bound what one pipelining client can buffer

    # serving

    def _start_next(self) -> None:
        request, keep_alive = self._pending.popleft()
        self._task = asyncio.get_running_loop().create_task(self._serve(request, keep_alive))
        self._task.add_done_callback(self._served)

    async def _serve(self, request: Request, keep_alive: bool) -> None:
        server = self._server
        try:
            response = await server.app(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            server.log_unhandled(request, exc)
            response = server.error_response(500, f"{type(exc).__name__} while handling request")
        keep_alive = keep_alive and not self.closing
        if isinstance(response, StreamedResponse):
            keep_alive = await self._stream(response, keep_alive)
        elif self._transport is not None:
            self._write(request, response, keep_alive)
        transport = self._transport
        if transport is None:
            return
        if server.on_complete is not None:
            server.on_complete(request, response)
        if not keep_alive:
            transport.close()

    def _write(self, request: Request, response: Response, keep_alive: bool) -> None:
        assert self._transport is not None
        head = encode_head(response, keep_alive=keep_alive)
        if request.method == "HEAD":
            self._transport.write(head)  # the length of the body a GET would get, and no body
        elif len(response.body) <= _DIRECT_WRITE_BYTES:
            self._transport.write(head + response.body)
        else:
            self._transport.write(head)
            self._transport.write(response.body)

    async def _stream(self, response: StreamedResponse, keep_alive: bool) -> bool:
        """Write the chunks as they come; False when the connection cannot be kept (cut body)."""
        assert response.chunks is not None
        sent = False
        try:
            if self._transport is None:
                return False
            head = encode_head(response, keep_alive=keep_alive)
            # encode_head writes `content-length: <len(body)>` right after the date; a streamed
            # body is delimited by chunks instead.
            self._transport.write(
                head.replace(b"content-length: 0\r\n", b"transfer-encoding: chunked\r\n", 1)
            )
            async for chunk in response.chunks:
                if self._transport is None:
                    return False
                if chunk:
                    self._transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                if self._writable is not None:
                    await self._writable.wait()
            if self._transport is None:
                return False
            self._transport.write(b"0\r\n\r\n")
            sent = True
        except Exception:
            return False  # the producer broke off mid-body; closing tells the client so
        finally:
            if not sent:
                response.chunks.close()
            if response.finished is not None:
                response.finished(sent)
        return keep_alive

    def _served(self, task: asyncio.Task[None]) -> None:
        self._task = None
        if self._transport is None or self._transport.is_closing():
            return
        if self._pending:
            self._transport.resume_reading()
            self._start_next()
        elif self.closing:
            self._transport.close()
        else:
            self._arm_idle_timer()

    def _reject(self, status: int, message: str) -> None:
        """Answer an unusable request and close: the rest of the stream cannot be trusted."""
        self._rejecting = True
        self._pending.clear()
        if self._transport is not None and not self._transport.is_closing():
            response = self._server.error_response(status, message)
            self._transport.write(encode_head(response, keep_alive=False) + response.body)
            self._transport.close()

    def _too_large_message(self) -> str:
        limit = self._server.limits.max_body_bytes
        return f"Request body exceeds the {limit}-byte limit (max_request_size); send less data"

    # idle keep-alive connections and shutdown

    def _arm_idle_timer(self) -> None:
        loop = asyncio.get_running_loop()
        self._idle_timer = loop.call_later(
            self._server.limits.keepalive_timeout, self.close_if_idle
        )

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def close_if_idle(self) -> None:
        if self._task is None and not self._pending and self._transport is not None:
            self._transport.close()

    def begin_close(self) -> None:
        self.closing = True
        self.close_if_idle()


class HttpServer:
    """Serves `app` on one listening socket; see the module docstring for the lifecycle."""

    def __init__(
        self,
        app: Handler,
        limits: HttpLimits,
        *,
        error_response: ErrorRenderer,
        on_complete: CompletionHook | None = None,
        on_unhandled: Callable[[Request, Exception], None] | None = None,
    ) -> None:
        self.app = app
        self.limits = limits
        self.error_response = error_response
        self.on_complete = on_complete
        self._on_unhandled = on_unhandled
        self._server: asyncio.Server | None = None
        self.connections: set[_Connection] = set()
        self._all_closed = asyncio.Event()

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), host, port, reuse_address=True, backlog=2048
        )

    @property
    def port(self) -> int:
        """The bound port (useful when started on port 0)."""
        assert self._server is not None, "start() first"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def begin_shutdown(self) -> None:
        """Stop accepting; close idle connections; close busy ones after their response."""
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.begin_close()
        self.connection_closed()

    async def wait_closed(self, timeout: float) -> bool:
        """Wait until every connection has closed; False if `timeout` passed first."""
        try:
            await asyncio.wait_for(self._all_closed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def log_unhandled(self, request: Request, exc: Exception) -> None:
        if self._on_unhandled is not None:
            self._on_unhandled(request, exc)

    def connection_closed(self) -> None:
        if not self.connections and self._server is not None and not self._server.is_serving():
            self._all_closed.set()
