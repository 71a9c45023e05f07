"""A keep-alive HTTP/1.1 client for the router's upstreams (the variants' Services), plain or TLS.

Why not httpx or aiohttp: the router adds its cost to every inference request, and a general
client spends most of its time on what a proxy does not need (URL objects, cookie jars, header
classes, decoding). This one is an asyncio Protocol feeding httptools' response parser, the
mirror image of the server core it sits behind, with:

- requests spread round robin over every address the upstream's host name resolves to (a
  headless Service's name lists each ready pod), resolved again every few seconds: each
  request goes to the next pod whatever connections are open (a ClusterIP balances
  connections, not requests, and keep-alive pins them); an address that refuses connections
  is passed over until the next resolution, and connections to an address that is gone from
  the name are closed (its pod is going away);
- a pool of idle keep-alive connections per address (last used first, closed after `idle`);
- one deadline per exchange: `connect` to open a connection, `response` from the request being
  written to the response's last byte (for streamed bodies: between two chunks), so a stuck
  upstream turns into an error, never a hang;
- bodies delimited by Content-Length up to `max_buffered` bytes (8 MiB by default) arriving
  whole (one write to the client); larger ones, chunked and close-delimited ones handed over
  as a stream of chunks with back-pressure, so no answer is held in memory beyond that;
- one retry on a fresh connection when a reused one is closed by the upstream before a single
  byte of the answer (the keep-alive race every pool meets: the upstream closed an idle
  connection just as the request went out on it).

An `https://` upstream is reached over TLS, its certificate verified against the CA given
(`upstream_tls`) and the URL's host name; a failed handshake is a `connect` failure.

Failures raise `UpstreamError` whose `reason` is the `reason` label of
`marfleet_router_upstream_errors_total`: connect, timeout or reset.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

CONNECT = "connect"
TIMEOUT = "timeout"
RESET = "reset"

_STREAM_HIGH_WATER = 256 * 1024
_STREAM_LOW_WATER = 64 * 1024


class UpstreamError(Exception):
    def __init__(self, reason: str, message: str, *, unsent: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.unsent = unsent
        """No connection was made, so no byte of the request left: safe to send elsewhere."""


class _StaleConnection(Exception):
    """A reused connection closed before any byte of the response: safe to resend."""


@dataclass(frozen=True)
class Timeouts:
    connect: float = 5.0
    response: float = 120.0
    idle: float = 30.0


@dataclass(slots=True)
class Reply:
    status: int
    headers: list[tuple[str, str]]  # names lower-cased, in the order received
    body: bytes  # the whole body, unless `stream` is set
    stream: BodyStream | None = None


class BodyStream:
    """The chunks of a streamed response body; iterate it exactly once, or `close()` it."""

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._done = False
        self._error: UpstreamError | None = None
        self._wakeup: asyncio.Future[None] | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._buffered <= _STREAM_LOW_WATER:
                    self._connection.resume()
                yield chunk
            elif self._error is not None:
                raise self._error
            elif self._done:
                return
            else:
                self._wakeup = asyncio.get_running_loop().create_future()
                try:
                    await self._wakeup
                finally:
                    self._wakeup = None

    def close(self) -> None:
        """Give up on the rest of the body (the client went away): drop the connection."""
        if not self._done:
            self._connection.abort()

    # fed by the connection

    def _feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered >= _STREAM_HIGH_WATER:
            self._connection.pause()
        self._wake()

    def _finish(self, error: UpstreamError | None = None) -> None:
        self._done = True
        self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)


class _Connection(asyncio.Protocol):
    """One upstream connection; carries one exchange at a time."""

    def __init__(self, pool: UpstreamPool, peer: str) -> None:
        self._pool = pool
        self.peer = peer
        self.tls = pool.tls
        """The TLS settings this connection was verified with (None: plain HTTP)."""
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._closed = False
        self._paused = False
        self.reused = False
        self._idle_timer: asyncio.TimerHandle | None = None
        self._reset_exchange()

    def _reset_exchange(self) -> None:
        self._waiter: asyncio.Future[Reply] | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._head_only = False
        self._received_any = False
        self._status = 0
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._stream: BodyStream | None = None
        self._delimited_by_close = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._received_any = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(RESET, f"upstream {self._pool.address} sent bad HTTP: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._transport = None
        self._pool.forget(self)
        if self._stream is not None and self._delimited_by_close:
            self._complete(keep_alive=False)
        elif self._waiter is not None or self._stream is not None:
            if not self._received_any and self.reused and self._stream is None:
                self._fail(_StaleConnection())
            else:
                message = f"upstream {self._pool.address} closed the connection mid-response"
                self._fail(UpstreamError(RESET, message))

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        if self._status < 200:
            self._headers = []  # an interim 1xx answer: the real one follows
            return
        if self._head_only or self._status in (204, 304):
            self._complete(keep_alive=False)  # no body follows, whatever the headers say
            return
        lengths = [value for name, value in self._headers if name == "content-length"]
        chunked = any(name == "transfer-encoding" for name, _ in self._headers)
        if lengths and not chunked:
            if lengths[0].strip().isdigit() and int(lengths[0]) <= self._pool.max_buffered:
                return  # held until complete
        else:
            self._delimited_by_close = not chunked
        self._stream = BodyStream(self)
        self._resolve(Reply(self._status, self._headers, b"", self._stream))

    def on_body(self, body: bytes) -> None:
        if self._stream is not None:
            self._stream._feed(body)
            self._arm_deadline()
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        if self._status >= 200:
            self._complete(keep_alive=self._parser.should_keep_alive())

    # one exchange

    async def exchange(self, data: bytes, *, head_only: bool) -> Reply:
        assert self._transport is not None and self._waiter is None
        self._head_only = head_only
        waiter = self._waiter = self._loop.create_future()
        self._arm_deadline()
        self._transport.write(data)
        try:
            return await waiter
        except asyncio.CancelledError:
            self.abort()  # the client went away mid-exchange; the connection is unusable
            raise

    def _complete(self, *, keep_alive: bool) -> None:
        stream = self._stream
        if stream is None:
            body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
            self._resolve(Reply(self._status, self._headers, body))
        self._cancel_deadline()
        self._reset_exchange()
        if stream is not None:
            stream._finish()
        if keep_alive and not self._closed and not self._paused:
            self._pool.release(self)
        else:
            self.abort()

    def _resolve(self, reply: Reply) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(reply)
        self._waiter = None

    def _fail(self, error: Exception) -> None:
        waiter, stream = self._waiter, self._stream
        self._cancel_deadline()
        self._reset_exchange()
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        if stream is not None:
            stream._finish(error if isinstance(error, UpstreamError) else None)
        self.abort()

    def _arm_deadline(self) -> None:
        self._cancel_deadline()
        self._deadline = self._loop.call_later(self._pool.timeouts.response, self._timed_out)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        seconds = self._pool.timeouts.response
        self._fail(
            UpstreamError(TIMEOUT, f"upstream {self._pool.address} sent nothing for {seconds} s")
        )

    # pool bookkeeping and flow control

    def park(self) -> None:
        self.reused = True
        self._idle_timer = self._loop.call_later(self._pool.timeouts.idle, self.abort)

    def unpark(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    @property
    def usable(self) -> bool:
        return not self._closed and self._transport is not None

    def pause(self) -> None:
        """The client reads slower than the upstream writes: stop reading (and the clock)."""
        if self._transport is not None and not self._paused:
            self._paused = True
            self._transport.pause_reading()
            self._cancel_deadline()

    def resume(self) -> None:
        if self._paused and self._transport is not None and not self._transport.is_closing():
            self._paused = False
            self._transport.resume_reading()
            if self._stream is not None:
                self._arm_deadline()

    def abort(self) -> None:
        self.unpark()
        self._closed = True
        if self._transport is not None:
            self._transport.abort()


def upstream_tls(ca_pem: bytes | None) -> ssl.SSLContext:
    """The client side of TLS to upstreams: certificates verified against `ca_pem` (PEM, one or
    more CA certificates), or the system's trust store when None, and the host name checked."""
    return ssl.create_default_context(cadata=ca_pem.decode("ascii") if ca_pem else None)


Resolver = Callable[[str, int], Awaitable[list[str]]]
"""host, port -> the addresses to connect to, in the order the name service gave them."""

MAX_BUFFERED_BYTES = 8 << 20
"""The largest answer body held whole; a longer one is streamed (`Reply.stream`)."""

RESOLVE_EVERY = 5.0
"""Seconds a resolution is used for (CoreDNS gives Service records a 5 s TTL)."""

_ATTEMPTS = 3
"""Addresses one request tries to connect to before it fails (each may take `connect`)."""

_NO_SUCH_NAME = frozenset(
    code
    for code in (getattr(socket, "EAI_NONAME", None), getattr(socket, "EAI_NODATA", None))
    if code is not None
)


async def resolve_host(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (duplicates dropped, order kept)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class UpstreamPool:
    """Keep-alive connections to one upstream base URL (`http://host:port`, or `https://host:port`
    with `tls`, the context `upstream_tls` makes), spread over the addresses `host` resolves to
    (`resolve`, at most every `resolve_every` seconds)."""

    def __init__(
        self,
        url: str,
        timeouts: Timeouts,
        *,
        tls: ssl.SSLContext | None = None,
        max_idle: int = 64,
        max_buffered: int = MAX_BUFFERED_BYTES,
        resolve: Resolver = resolve_host,
        resolve_every: float = RESOLVE_EVERY,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream URL {url!r} must look like http(s)://host:port")
        if (parts.scheme == "https") != (tls is not None):
            raise ValueError(f"upstream URL {url!r}: TLS context for https:// URLs only")
        self.host = parts.hostname
        self.port = parts.port or (443 if tls is not None else 80)
        self.address = f"{self.host}:{self.port}"
        self.tls = tls
        self.timeouts = timeouts
        self._max_idle = max_idle
        self.max_buffered = max_buffered
        self._idle: dict[str, list[_Connection]] = {}
        self._resolve = resolve
        self._resolve_every = resolve_every
        self._peers: tuple[str, ...] = ()
        self._resolved_at = -resolve_every
        self._resolving: asyncio.Task[tuple[str, ...]] | None = None
        self._refusing: set[str] = set()
        self._turn = 0

    async def request(self, data: bytes, *, head_only: bool = False) -> Reply:
        """Send one serialised request (head and body) to the next address and return the
        upstream's answer."""
        failed: UpstreamError | None = None
        for peer in self._next(await self._current_peers()):
            connection = self._take_idle(peer)
            if connection is not None:
                try:
                    return await connection.exchange(data, head_only=head_only)
                except _StaleConnection:
                    pass
            try:
                connection = await self._connect(peer)
            except UpstreamError as error:
                self._refusing.add(peer)
                failed = error
                continue
            try:
                return await connection.exchange(data, head_only=head_only)
            except _StaleConnection:
                message = f"upstream {self.address} closed the connection without answering"
                raise UpstreamError(RESET, message) from None
        assert failed is not None  # _next gives at least one address
        raise failed

    def use_tls(self, tls: ssl.SSLContext) -> None:
        """Verify new connections with `tls` from now on; idle connections are closed, and
        busy ones once they have answered, since they were verified with the previous
        settings (which may have trusted a CA `tls` no longer does)."""
        if self.tls is None:
            raise ValueError(f"upstream {self.address} is plain HTTP: it takes no TLS settings")
        self.tls = tls
        self.close()

    def release(self, connection: _Connection) -> None:
        idle = self._idle.get(connection.peer)
        if (
            idle is None
            or connection.tls is not self.tls
            or sum(map(len, self._idle.values())) >= self._max_idle
        ):
            # its address is gone from the name, it was verified with TLS settings no longer
            # in use, or enough are idle
            connection.abort()
            return
        connection.park()
        idle.append(connection)

    def forget(self, connection: _Connection) -> None:
        idle = self._idle.get(connection.peer)
        if idle is not None and connection in idle:
            idle.remove(connection)

    def close(self) -> None:
        idle, self._idle = self._idle, {peer: [] for peer in self._idle}
        for connections in idle.values():
            for connection in connections:
                connection.abort()

    def _next(self, peers: tuple[str, ...]) -> list[str]:
        """The addresses to try, in order: round robin, those refusing connections last."""
        start = self._turn % len(peers)
        self._turn += 1
        turn = peers[start:] + peers[:start]
        willing = [peer for peer in turn if peer not in self._refusing]
        return (willing or list(turn))[:_ATTEMPTS]

    async def _current_peers(self) -> tuple[str, ...]:
        if self._peers and time.monotonic() - self._resolved_at < self._resolve_every:
            return self._peers
        if self._resolving is None:
            self._resolving = asyncio.ensure_future(self._resolve_now())
            self._resolving.add_done_callback(self._resolved)
        return await asyncio.shield(self._resolving)

    def _resolved(self, task: asyncio.Task[tuple[str, ...]]) -> None:
        self._resolving = None
        if not task.cancelled():
            task.exception()  # retrieved here; every waiter has it raised

    async def _resolve_now(self) -> tuple[str, ...]:
        try:
            peers = tuple(await self._resolve(self.host, self.port))
        except OSError as exc:
            gone = isinstance(exc, socket.gaierror) and exc.errno in _NO_SUCH_NAME
            if self._peers and not gone:
                # the name service failed, not the name: keep the addresses a little longer
                self._resolved_at = time.monotonic()
                return self._peers
            self._use(())
            message = f"cannot resolve upstream {self.address}: {exc.strerror or exc}"
            raise UpstreamError(CONNECT, message, unsent=True) from None
        if not peers:
            self._use(())
            raise UpstreamError(CONNECT, f"upstream {self.address} has no address", unsent=True)
        self._use(peers)
        return peers

    def _use(self, peers: tuple[str, ...]) -> None:
        """Make `peers` the addresses in use; close idle connections to any other."""
        self._peers, self._resolved_at = peers, time.monotonic()
        self._refusing.clear()
        for peer in set(self._idle) - set(peers):
            for connection in self._idle.pop(peer):
                connection.abort()
        for peer in peers:
            self._idle.setdefault(peer, [])

    def _take_idle(self, peer: str) -> _Connection | None:
        idle = self._idle.get(peer, [])
        while idle:
            connection = idle.pop()
            connection.unpark()
            if connection.usable:
                return connection
        return None

    async def _connect(self, peer: str) -> _Connection:
        loop = asyncio.get_running_loop()
        seconds = self.timeouts.connect
        where = self.address if peer == self.host else f"{self.address} ({peer})"
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(self, peer),
                    peer,
                    self.port,
                    ssl=self.tls,
                    server_hostname=self.host if self.tls is not None else None,
                ),
                seconds,
            )
        except TimeoutError:
            message = f"connecting to upstream {where} took over {seconds} s"
            raise UpstreamError(TIMEOUT, message, unsent=True) from None
        except ssl.SSLError as exc:
            message = f"TLS with upstream {where} failed: {exc.reason or exc}"
            raise UpstreamError(CONNECT, message, unsent=True) from None
        except OSError as exc:
            message = f"cannot connect to upstream {where}: {exc.strerror or exc}"
            raise UpstreamError(CONNECT, message, unsent=True) from None
        return protocol
