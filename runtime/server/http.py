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

Every resource a client can make this core hold is bounded (`HttpLimits`, documented with their
config keys in docs/operations.md): the request head is cut off at `max_head_bytes` *before* it
reaches the parser (431, or 414 when the URL is what grew), so parsing cost stays linear; a head
must complete within `head_timeout` and a body must keep arriving (`body_timeout` between reads),
else 408; a listener holds at most `max_connections`, and the next one gets 503 and is closed.
Answers wait for the client to read them: while the transport's buffer is over its high-water
mark no further pipelined request is served (a client that sends requests and reads nothing
would otherwise make the server hold every answer), and a client that reads nothing of its
answer for `body_timeout` has its connection reset, the answer dropped (one that reads slowly
keeps it).
Refusals use a lingering close (answer, half-close, discard input for a moment), so a client
that is still sending reads the answer instead of a reset. Response headers are checked before
they are written: a value with CR/LF or outside latin-1 becomes a 500 that says which header.

With an `ssl.SSLContext` (`start(..., tls=...)`) the listener speaks HTTPS only. A connection
counts against `max_connections` from its accept, while its handshake runs too (which must end
within `head_timeout`), so connections that never finish one are bounded as plain ones are;
one over the limit is closed at once (no answer can be read before a handshake).

A server can add the same headers to every answer it writes (`extra_headers`: TorchServe's
no-cache and CORS headers on `marfleet serve`'s ports), a handler's own header of the same name
winning, and give every request an id (`request_ids`): the client's `x-request-id` when it is a
plain token of at most 128 characters, else a fresh UUID, put into the request's headers (so the
data plane hands the handler the same id) and sent back on the answer, as TorchServe does.

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
import fcntl
import re
import socket
import ssl
import struct
import termios
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Protocol, cast
from urllib.parse import parse_qsl, unquote

import httptools
from marfleet.runtime.server.request_ids import REQUEST_ID_HEADER, request_id_of

MODEL_VERSION_HEADER = "x-marfleet-model-version"
"""On every inference answer of `marfleet serve`: the version of the model that answered. The
router labels its request series with it, so a rollout judges a version on its own answers."""


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
    """What one client may make a listener hold; defaults and config keys: docs/operations.md."""

    max_body_bytes: int = 6_553_500
    max_head_bytes: int = 64 * 1024  # request line + headers
    head_timeout: float = 10.0  # from the first byte of a head (or the connection) to its end
    body_timeout: float = 30.0  # longest pause in reading a body, or in the client reading ours
    keepalive_timeout: float = 75.0
    max_connections: int = 1000  # per listener
    max_buffered_body_bytes: int = 512 * 1024 * 1024  # bodies still arriving, per listener


class InvalidHeader(ValueError):
    """A response header a handler set cannot be written safely; the message names it."""


_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
_DIRECT_WRITE_BYTES = 64 * 1024
_LINGER_S = 1.0  # after a refusal: how long input is read and dropped before closing
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close sends RST, drops the rest
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_UNSAFE_VALUE = re.compile(r"[\r\n\x00]")
_SUPPORTED_VERSIONS = ("1.1", "1.0")


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


class ExtraHeaders:
    """Headers added to every answer of a server, checked and encoded once; an answer that
    sets a header of the same name itself keeps its own."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._lines = tuple(
            (name.lower(), _checked_header_line(name, value)) for name, value in headers.items()
        )
        self._block = b"".join(line for _, line in self._lines)
        self._names = frozenset(name for name, _ in self._lines) | {REQUEST_ID_HEADER}

    def beside(self, own: Mapping[str, str] | None, request_id: str | None) -> bytes:
        """The lines to add to an answer whose own headers are `own`."""
        block = self._block
        if own and not self._names.isdisjoint(map(str.lower, own)):  # rare: a handler's own
            names = {name.lower() for name in own}
            block = b"".join(line for name, line in self._lines if name not in names)
            if REQUEST_ID_HEADER in names:
                request_id = None
        if request_id is not None:  # checked when it was chosen (request_id_of)
            block += b"x-request-id: " + request_id.encode("latin-1") + b"\r\n"
        return block


NO_EXTRA_HEADERS = ExtraHeaders({})


def encode_head(
    response: Response,
    *,
    keep_alive: bool,
    extra: ExtraHeaders = NO_EXTRA_HEADERS,
    request_id: str | None = None,
) -> bytes:
    """Status line and headers of `response` (with `extra` and the `request_id` header),
    ready for the socket; raises InvalidHeader."""
    reason = _REASONS.get(response.status, b"")
    parts = [
        b"HTTP/1.1 %d %s\r\n" % (response.status, reason),
        _date.get(),
        b"content-length: %d\r\n" % len(response.body),
    ]
    if response.content_type:
        parts.append(_header_line("content-type", response.content_type))
    if response.headers:
        for name, value in response.headers.items():
            parts.append(_header_line(name, value))
    parts.append(extra.beside(response.headers, request_id))
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


_HEADER_LINES: dict[tuple[str, str], bytes] = {}  # checked and encoded: most answers repeat them
_HEADER_LINES_MAX = 512


def _header_line(name: str, value: str) -> bytes:
    key = (name, value)
    line = _HEADER_LINES.get(key)
    if line is None:
        line = _checked_header_line(name, value)
        if len(_HEADER_LINES) >= _HEADER_LINES_MAX:
            _HEADER_LINES.clear()  # per-request values (ids) must not crowd out the common ones
        _HEADER_LINES[key] = line
    return line


def _checked_header_line(name: str, value: str) -> bytes:
    if not isinstance(name, str) or _TOKEN.fullmatch(name) is None:
        raise InvalidHeader(f"response header name {name!r} is not a valid HTTP token")
    if not isinstance(value, str):
        raise InvalidHeader(f"response header {name!r}: value must be text, got {type(value)}")
    if _UNSAFE_VALUE.search(value):
        raise InvalidHeader(f"response header {name!r}: value contains CR, LF or NUL")
    try:
        return f"{name}: {value}\r\n".encode("latin-1")
    except UnicodeEncodeError:
        raise InvalidHeader(
            f"response header {name!r}: value has characters outside latin-1; "
            "percent-encode it (RFC 8187) or put it in the body"
        ) from None


def _unsent(transport: asyncio.Transport) -> int:
    """Bytes written and not yet taken by the client: the transport's buffer and the kernel's
    send queue (the kernel takes more from the transport only once half its queue is free, so
    a slow reader's progress shows there first)."""
    unsent = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with suppress(OSError):
            queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
            unsent += struct.unpack("i", queued)[0]
    return unsent


def _hand_over(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    """Give `data` to `protocol` as its transport would have (buffered protocols too)."""
    if not hasattr(protocol, "buffer_updated"):
        cast(asyncio.Protocol, protocol).data_received(data)
        return
    buffered = cast(asyncio.BufferedProtocol, protocol)
    view = memoryview(data)
    while view:
        buffer = memoryview(buffered.get_buffer(len(view)))
        size = min(len(buffer), len(view))
        buffer[:size] = view[:size]
        buffered.buffer_updated(size)
        view = view[size:]


class _Connection(asyncio.Protocol):
    """One client connection: parses requests and answers them in order (pipelining safe).

    One timer bounds whatever the connection is waiting for: the rest of a request head
    (`head_timeout`, not extended by data), the next piece of a body (`body_timeout` since the
    last read) or the next request on an idle keep-alive connection (`keepalive_timeout`).
    """

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._limits = server.limits
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._client = ""
        self._url = b""
        self._header_names: list[bytes] = []
        self._header_values: list[bytes] = []
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_size = 0
        self._buffered = 0  # of this connection's body bytes, those counted by the listener
        self._in_head = True  # between requests or inside a head: input counts against the head
        self._head_bytes = 0
        self._head_started = False
        self._in_body = False
        self._last_read = 0.0
        self._rejecting = False
        self._pending: deque[tuple[Request, bool]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None  # fires at _timer_at (see _arm)
        self._timer_at = 0.0
        self._deadline = 0.0
        self._on_deadline: Callable[[], object] | None = None
        self._writable: asyncio.Event | None = None  # made by the first pause_writing()
        self._unread: asyncio.TimerHandle | None = None  # while writing is paused
        self._unsent = 0  # bytes waiting to be sent when _unread was armed
        self._handshake: asyncio.Task[None] | None = None  # TLS: while the handshake runs
        self._hello: list[bytes] | None = None  # TLS: raw input before start_tls took over
        self._early: list[bytes] | None = None  # TLS: what arrived before start_tls returned
        self.closing = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self._client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "")
        server = self._server
        if len(server.connections) >= self._limits.max_connections:
            server.refused_connections += 1
            if server.tls is not None:  # no answer can be read before a handshake
                self._transport.abort()
                return
            self._reject(
                503,
                f"This listener already holds {self._limits.max_connections} connections "
                "(max_connections); retry later",
                headers={"Retry-After": "1"},
            )
            return
        server.connections.add(self)
        if server.tls is not None:
            self._hello, self._early = [], []
            self._handshake = asyncio.get_running_loop().create_task(self._start_tls(server.tls))
            return
        self._arm(self._limits.head_timeout, self._head_timed_out)

    async def _start_tls(self, tls: ssl.SSLContext) -> None:
        """The handshake, on a connection that already counts against max_connections (so a
        flood of connections that never finish theirs is bounded as plain ones are), within
        head_timeout; then the head's own head_timeout begins.

        The loop starts reading as soon as connection_made returns, so the client's first
        bytes may reach this protocol before start_tls has put its TLS protocol on the
        transport: they are kept (reading paused) and handed to that protocol, which buffers
        them until its handshake begins."""
        raw = self._transport
        if raw is None:  # gone before the handshake could begin
            return
        loop = asyncio.get_running_loop()
        starting = loop.create_task(
            loop.start_tls(
                raw, self, tls, server_side=True, ssl_handshake_timeout=self._limits.head_timeout
            )
        )
        try:
            await asyncio.sleep(0)  # callbacks run in order: start_tls has taken the transport
            if self._transport is None:  # lost just before: no TLS protocol will hear of it
                starting.cancel()
                return
            hello, self._hello = self._hello or [], None
            if hello and not starting.done():
                _hand_over(raw.get_protocol(), b"".join(hello))
            secure = await starting
        except asyncio.CancelledError:
            self._handshake_failed(raw)
            raise
        except Exception:  # refused by either side, timed out, or closed at shutdown
            self._handshake_failed(raw)
            return
        self._handshake = None
        if self._transport is None:  # lost meanwhile
            return
        self._transport = cast(asyncio.Transport, secure)
        early, self._early = self._early or [], None
        self._arm(self._limits.head_timeout, self._head_timed_out)
        for data in early:
            self.data_received(data)

    def _handshake_failed(self, raw: asyncio.Transport) -> None:
        self._handshake = None
        raw.abort()
        self.connection_lost(None)

    def data_received(self, data: bytes) -> None:
        if self._early is not None:  # TLS, before start_tls has returned
            if self._hello is not None:  # raw bytes, before start_tls took the transport
                self._hello.append(data)
                if self._transport is not None:
                    self._transport.pause_reading()
                return
            self._early.append(data)  # decrypted, after the handshake
            return
        if self._rejecting:
            return  # lingering after a refusal: input is dropped
        self._last_read = asyncio.get_running_loop().time()
        limit = self._limits.max_head_bytes
        while data and not self._rejecting:
            if not self._in_head:
                self._feed(data)
                return
            # Never hand the parser more head than the limit: its cost would grow with the input.
            room = limit - self._head_bytes
            if room <= 0:
                self._head_too_large()
                return
            piece, data = data[:room], data[room:]
            self._head_bytes += len(piece)
            self._feed(piece)

    def _feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(400, "Protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            if "overflow" in str(exc).lower():
                self._reject(413, self._too_large_message())
            else:
                self._reject(400, f"Malformed HTTP request: {exc}")

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.Event()
        self._writable.clear()
        if self._unread is None and self._transport is not None:
            self._unsent = _unsent(self._transport)
            loop = asyncio.get_running_loop()
            self._unread = loop.call_later(self._limits.body_timeout, self._answer_unread)

    def resume_writing(self) -> None:
        if self._unread is not None:
            self._unread.cancel()
            self._unread = None
        if self._writable is not None:
            self._writable.set()
        if self._task is None and self._pending and self._transport is not None:
            self._transport.resume_reading()
            self._start_next()  # a pipelined request that waited for its turn to be read

    def _writing(self) -> bool:
        """Whether the client reads what is written (writing is not paused)."""
        return self._writable is None or self._writable.is_set()

    def _answer_unread(self) -> None:
        """body_timeout after writing paused: if the client has read some of its answer since
        (less of it waits), it gets as long again; if nothing, the answer is dropped, and what
        the kernel still holds for it (a reset, not a close that would wait to deliver it)."""
        self._unread = None
        if self._transport is None:
            return
        unsent = _unsent(self._transport)
        if unsent < self._unsent:  # while paused nothing is added: less means it was read
            self._unsent = unsent
            loop = asyncio.get_running_loop()
            self._unread = loop.call_later(self._limits.body_timeout, self._answer_unread)
            return
        sock = self._transport.get_extra_info("socket")
        if sock is not None:
            with suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
        self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        """Also called by _start_tls when a handshake fails: everything here may run twice."""
        self._server.connections.discard(self)
        self._hello = self._early = None
        self._release_body()
        self._transport = None
        if self._writable is not None:
            self._writable.set()
        if self._unread is not None:
            self._unread.cancel()
            self._unread = None
        self._cancel_timer()
        if self._timer is not None:
            self._timer.cancel()  # nothing is due any more: do not keep the connection alive
            self._timer = None
        self._pending.clear()
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the client is gone: drop its queued work
        self._server.connection_closed()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._header_names = []
        self._header_values = []
        self._headers = {}  # a refusal before this head is complete must not use the last one's
        self._body = []
        self._body_size = 0
        if not self._head_started:
            self._head_started = True
            self._arm(self._limits.head_timeout, self._head_timed_out)

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_names.append(name)
        self._header_values.append(value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_started = False
        self._cancel_timer()
        headers: dict[str, str] = {}
        for raw_name, raw_value in zip(self._header_names, self._header_values, strict=True):
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        self._headers = headers
        limits = self._limits
        version = self._parser.get_http_version()
        if version not in _SUPPORTED_VERSIONS:
            self._reject(505, f"HTTP/{version} is not supported; send HTTP/1.1 (or 1.0)")
            return
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limits.max_body_bytes:
            self._reject(413, self._too_large_message())
            return
        if (length is not None and length != "0") or "transfer-encoding" in headers:
            self._in_body = True
            self._arm(limits.body_timeout, self._body_timed_out)
        if headers.get("expect", "").lower() == "100-continue" and self._transport is not None:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self._rejecting:
            return
        self._body_size += len(body)
        if self._body_size > self._limits.max_body_bytes:
            self._reject(413, self._too_large_message())
            return
        server = self._server
        server.buffered_body_bytes += len(body)
        self._buffered += len(body)
        if server.buffered_body_bytes > self._limits.max_buffered_body_bytes:
            self._reject(
                503,
                "Request bodies still arriving on this listener hold over "
                f"{self._limits.max_buffered_body_bytes} bytes (max_buffered_request_size); "
                "retry later",
                headers={"Retry-After": "1"},
            )
            return
        self._body.append(body)

    def _release_body(self) -> None:
        """This connection's body no longer counts as arriving (complete, refused or gone)."""
        self._server.buffered_body_bytes -= self._buffered
        self._buffered = 0

    def on_message_complete(self) -> None:
        if self._rejecting:
            return
        if self._in_body:
            self._in_body = False
            self._cancel_timer()
        self._release_body()
        self._in_head = True
        self._head_bytes = 0
        parsed = httptools.parse_url(self._url)
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        if self._server.request_ids:
            self._headers[REQUEST_ID_HEADER] = request_id_of(self._headers)
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
        if self._task is None and self._writing():
            self._start_next()
        elif len(self._pending) > 1 and self._transport is not None:
            self._transport.pause_reading()  # bound what one pipelining client can buffer

    # serving

    def _start_next(self) -> None:
        request, keep_alive = self._pending.popleft()
        self._task = asyncio.get_running_loop().create_task(self._serve(request, keep_alive))
        self._task.add_done_callback(self._served)

    async def _respond(self, request: Request) -> Response:
        """The app's response; a 500 that says what failed when the app raised."""
        server = self._server
        try:
            return await server.app(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            server.log_unhandled(request, exc)
            return server.error_response(
                500,
                f"The server failed while handling {request.method} {request.path}; "
                "the server log has the details",
            )

    def _head(
        self, request: Request, response: Response, keep_alive: bool
    ) -> tuple[Response, bytes]:
        """The response to send and its head: a 500 naming the header if one is unsafe."""
        server = self._server
        request_id = request.headers.get(REQUEST_ID_HEADER) if server.request_ids else None
        try:
            head = encode_head(
                response, keep_alive=keep_alive, extra=server.extra_headers, request_id=request_id
            )
            return response, head
        except InvalidHeader as error:
            server.log_unhandled(request, error)
            refusal = server.error_response(500, f"The handler's answer was not sent: {error}")
            head = encode_head(
                refusal, keep_alive=keep_alive, extra=server.extra_headers, request_id=request_id
            )
            return refusal, head

    async def _serve(self, request: Request, keep_alive: bool) -> None:
        server = self._server
        response = await self._respond(request)
        keep_alive = keep_alive and not self.closing
        if isinstance(response, StreamedResponse):
            keep_alive = await self._stream(request, response, keep_alive)
        elif self._transport is not None:
            response = self._write(request, response, keep_alive)
        transport = self._transport
        if transport is None:
            return
        if server.on_complete is not None:
            server.on_complete(request, response)
        if not keep_alive:
            transport.close()

    def _write(self, request: Request, response: Response, keep_alive: bool) -> Response:
        """Write `response` (or the 500 that replaces it, which is returned)."""
        assert self._transport is not None
        response, head = self._head(request, response, keep_alive)
        if request.method == "HEAD":
            self._transport.write(head)  # the length of the body a GET would get, and no body
        elif len(response.body) <= _DIRECT_WRITE_BYTES:
            self._transport.write(head + response.body)
        else:
            self._transport.write(head)
            self._transport.write(response.body)
        return response

    async def _stream(self, request: Request, response: StreamedResponse, keep_alive: bool) -> bool:
        """Write the chunks as they come; False when the connection cannot be kept (cut body)."""
        assert response.chunks is not None
        sent = False
        try:
            if self._transport is None:
                return False
            checked, head = self._head(request, response, keep_alive)
            if checked is not response:
                self._transport.write(head + checked.body)  # an unsafe header: the 500 instead
                return keep_alive
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
            if self._writing():  # else resume_writing serves it once the client reads
                self._transport.resume_reading()
                self._start_next()
        elif self.closing:
            self._transport.close()
        elif not self._head_started:
            self._arm(self._limits.keepalive_timeout, self.close_if_idle)

    # refusals

    def _reject(
        self, status: int, message: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        """Answer an unusable request and close: the rest of the stream cannot be trusted.

        The answer is followed by a half-close, and input is read and dropped for a moment
        before the socket closes, so a client still sending its request reads the answer
        rather than a connection reset.
        """
        self._rejecting = True
        self._pending.clear()
        self._release_body()
        self._body = []
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        server = self._server
        response = server.error_response(status, message)
        if headers:
            response.headers = {**(response.headers or {}), **headers}
        request_id = request_id_of(self._headers) if server.request_ids else None
        head = encode_head(
            response, keep_alive=False, extra=server.extra_headers, request_id=request_id
        )
        transport.write(head + response.body)
        if transport.can_write_eof():
            transport.write_eof()
            self._arm(_LINGER_S, transport.close)
        else:
            transport.close()

    def _head_too_large(self) -> None:
        limit = self._limits.max_head_bytes
        if len(self._url) * 2 > self._head_bytes:
            self._reject(
                414,
                f"The request URL exceeds the {limit}-byte head limit "
                "(max_request_head_size); send parameters in the body",
            )
        else:
            self._reject(
                431,
                f"The request headers exceed the {limit}-byte head limit "
                "(max_request_head_size); send fewer or shorter headers",
            )

    def _too_large_message(self) -> str:
        limit = self._limits.max_body_bytes
        return f"Request body exceeds the {limit}-byte limit (max_request_size); send less data"

    # timers: head, body, keep-alive idle, linger

    # One loop timer per connection, moved as little as possible: a request re-arms the
    # deadline three times (head, body, keep-alive), and cancelling and scheduling a loop timer
    # each time was a visible share of the frontend's CPU. A later deadline keeps the timer that
    # fires first, which then re-schedules itself for the deadline; cancelling only forgets the
    # callback.

    def _arm(self, delay: float, callback: Callable[[], object]) -> None:
        """Call `callback` in `delay` seconds, instead of whatever was armed before."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        self._deadline = deadline
        self._on_deadline = callback
        if self._timer is not None:
            if self._timer_at <= deadline:
                return
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = loop.call_at(deadline, self._timer_fired)

    def _cancel_timer(self) -> None:
        self._on_deadline = None

    def _timer_fired(self) -> None:
        self._timer = None
        callback = self._on_deadline
        if callback is None:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self._deadline - 0.001:  # re-armed for later since it was scheduled
            self._timer_at = self._deadline
            self._timer = loop.call_at(self._deadline, self._timer_fired)
            return
        self._on_deadline = None
        callback()

    def _head_timed_out(self) -> None:
        if self._task is not None or self._pending:
            # a pipelined head waits while an earlier request is served; its clock starts after
            self._arm(self._limits.head_timeout, self._head_timed_out)
            return
        if not self._head_started:
            if self._transport is not None:
                self._transport.close()  # connected, sent nothing: nobody to answer
            return
        self._reject(
            408,
            f"The request head did not arrive within {self._limits.head_timeout:g} s "
            "(request_head_timeout_seconds)",
        )

    def _body_timed_out(self) -> None:
        idle = asyncio.get_running_loop().time() - self._last_read
        if idle < self._limits.body_timeout:
            self._arm(self._limits.body_timeout - idle, self._body_timed_out)
            return
        self._reject(
            408,
            f"The request body stopped arriving for {self._limits.body_timeout:g} s "
            "(request_body_timeout_seconds)",
        )

    # idle keep-alive connections and shutdown

    def close_if_idle(self) -> None:
        if (
            self._task is None
            and not self._pending
            and not self._head_started
            and self._transport is not None
        ):
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
        extra_headers: Mapping[str, str] | None = None,
        request_ids: bool = False,
    ) -> None:
        """`extra_headers`: added to every answer (raises InvalidHeader if one cannot be
        written); `request_ids`: every request gets an id, sent back as `x-request-id`."""
        self.app = app
        self.limits = limits
        self.extra_headers = ExtraHeaders(extra_headers or {})
        self.request_ids = request_ids
        self.error_response = error_response
        self.on_complete = on_complete
        self._on_unhandled = on_unhandled
        self._server: asyncio.Server | None = None
        self.tls: ssl.SSLContext | None = None
        self.connections: set[_Connection] = set()
        self.refused_connections = 0  # over max_connections, since start
        self.buffered_body_bytes = 0  # of requests whose bodies are still arriving
        self._all_closed = asyncio.Event()

    async def start(self, host: str, port: int, *, tls: ssl.SSLContext | None = None) -> None:
        """Listen on host:port; with `tls`, HTTPS only (a plain-HTTP client's connection is
        closed when its handshake fails, before any request is read). A connection counts
        against max_connections from its accept, its handshake included."""
        self.tls = tls
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
