"""One way to open a gRPC listener: the server's inference and management ports and the router's.

Why: grpcio's defaults leave unbounded what a client can make a listener hold, where the HTTP
core (`http.py`) bounds each: connections (each one file descriptor and about 15 KiB), calls in
flight on them (a coroutine each, many per connection), connections that never speak (held two
minutes), connections that go quiet (held forever) and peers that vanish without closing (held
until TCP gives up, a quarter of an hour or more, with their calls). `GrpcLimits` maps the HTTP
limits onto gRPC's own mechanisms, so one config key bounds both protocols:

- `max_connections`: connections per listener (one more is closed at once: UNAVAILABLE), and
  calls in flight per listener (one more is answered RESOURCE_EXHAUSTED; an HTTP connection
  carries one request at a time, so the two bounds match);
- `head_timeout`: a new connection has this long to finish its TLS and HTTP/2 handshake;
- `keepalive_timeout`: a connection without a call for this long is sent GOAWAY and closed;
- `keepalive`: a connection silent for this long is pinged, and closed with its calls when the
  ping is not answered within as long again (at most 20 s): a vanished client's calls end and
  free their places;
- `max_age`: a connection this old is sent GOAWAY (clients open a new one for their next
  calls, which also spreads long-lived clients over pods added since) and closed, with what its
  calls still hold, once as long again has passed: the one bound on an answer the client never
  reads, which gRPC's flow control keeps in the server's memory (a grpcio server cannot reset
  one stream), however often the client answers pings;
- message sizes: `max_receive_bytes` and `max_send_bytes` (RESOURCE_EXHAUSTED beyond);
- `max_head_bytes`: a call's metadata, its headers (RESOURCE_EXHAUSTED beyond; gRPC's own
  default refuses some calls past 8 KiB and all past 16 KiB, where HTTP takes 64 KiB);
- `message_timeout`: a unary call's one request message must arrive whole within this long
  of the call's start, and `idle_timeout` bounds a request stream's wait for its next message
  from when the service asks for it (a stream between two requests is idle, as a keep-alive
  connection between two requests is): DEADLINE_EXCEEDED beyond, and the call's place is free
  again. grpcio itself waits forever for a message that was begun and never finished, or never
  begun, however often the client answers pings. Where a service reads a request stream at the
  same time as it answers (the router relays both ways at once), only the unary messages are
  bounded here (`bound_streams`): the variant behind bounds the stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeAlias

import grpc
from marfleet.runtime.server.http import HttpLimits

DEFAULT_KEEPALIVE_S = 60.0
DEFAULT_MAX_AGE_S = 300.0
_MAX_PING_WAIT_S = 20.0
_SWEEP_S = 0.5

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


@dataclass(frozen=True)
class GrpcLimits:
    """What one client may make a gRPC listener hold (see the module docstring)."""

    max_receive_bytes: int
    max_send_bytes: int
    max_connections: int
    max_head_bytes: int
    head_timeout: float
    idle_timeout: float
    message_timeout: float
    keepalive: float = DEFAULT_KEEPALIVE_S
    max_age: float = DEFAULT_MAX_AGE_S
    bound_streams: bool = True

    @classmethod
    def of(
        cls,
        http: HttpLimits,
        *,
        max_send_bytes: int,
        keepalive: float,
        max_age: float,
        bound_streams: bool,
    ) -> GrpcLimits:
        """The gRPC side of a listener's HTTP limits."""
        return cls(
            max_receive_bytes=http.max_body_bytes,
            max_send_bytes=max_send_bytes,
            max_connections=http.max_connections,
            max_head_bytes=http.max_head_bytes,
            head_timeout=http.head_timeout,
            idle_timeout=http.keepalive_timeout,
            message_timeout=http.body_timeout,
            keepalive=keepalive,
            max_age=max_age,
            bound_streams=bound_streams,
        )

    def options(self) -> list[tuple[str, int]]:
        """grpcio server options enforcing these limits."""
        ping_wait = _ms(min(self.keepalive, _MAX_PING_WAIT_S))
        return [
            ("grpc.max_receive_message_length", self.max_receive_bytes),
            ("grpc.max_send_message_length", self.max_send_bytes),
            ("grpc.max_allowed_incoming_connections", self.max_connections),
            ("grpc.max_metadata_size", self.max_head_bytes),  # soft: refuses some calls
            ("grpc.absolute_max_metadata_size", self.max_head_bytes),  # hard: refuses all
            ("grpc.server_handshake_timeout_ms", _ms(self.head_timeout)),
            ("grpc.max_connection_idle_ms", _ms(self.idle_timeout)),
            ("grpc.keepalive_time_ms", _ms(self.keepalive)),
            ("grpc.keepalive_timeout_ms", ping_wait),
            ("grpc.http2.ping_timeout_ms", ping_wait),  # what grpcio >= 1.6x waits for an ack
            ("grpc.http2.max_pings_without_data", 0),  # keep pinging a stream that sends nothing
            ("grpc.max_connection_age_ms", _ms(self.max_age)),
            ("grpc.max_connection_age_grace_ms", _ms(self.max_age)),
        ]


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class _MessageDeadlines:
    """Ends a wait for a request message that outlasts its time: the waiting call is
    cancelled and answered DEADLINE_EXCEEDED.

    Why one sweep every half second rather than a timer per wait: a timer (`asyncio.timeout`,
    `wait_for`) cost 25-35 µs per call on top of grpcio's 180 (an echo at concurrency 16,
    measured); an entry in a dictionary costs next to nothing, and a wait ended up to half a
    second late bounds it as well."""

    def __init__(self, seconds: float, late: str) -> None:
        self.seconds = seconds
        self._late = late  # what DEADLINE_EXCEEDED says
        self._waiting: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    async def read(self, context: Context) -> Any:
        """The next request message (grpc.aio.EOF when the client has sent its last)."""
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        self._waiting[task] = loop.time() + self.seconds
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep())
        try:
            return await context.read()
        except asyncio.CancelledError:
            if task not in self._expired:
                raise
            self._expired.discard(task)
            task.uncancel()
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, self._late)
            raise AssertionError("abort returned") from None  # abort always raises
        finally:
            self._waiting.pop(task, None)

    async def _sweep(self) -> None:
        """Runs while any wait does: cancels each one past its deadline."""
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                await asyncio.sleep(_SWEEP_S)
                now = loop.time()
                for task, deadline in list(self._waiting.items()):
                    if deadline <= now:
                        del self._waiting[task]
                        self._expired.add(task)
                        task.cancel()
        finally:
            self._sweeper = None

    async def one(self, context: Context) -> Any:
        """A unary call's request message."""
        request = await self.read(context)
        if request is grpc.aio.EOF:
            await context.abort(  # TorchServe's (grpc-java's) code and words
                grpc.StatusCode.INTERNAL,
                "Half-closed without a request",
            )
        return request

    async def each(self, context: Context) -> AsyncIterator[Any]:
        """A request stream's messages, each one bounded."""
        while (request := await self.read(context)) is not grpc.aio.EOF:
            yield request


class _Bounded(grpc.GenericRpcHandler):
    """`inner`'s methods, their request messages read within the deadlines' time.

    grpcio reads a unary call's message before its method runs and gives no way to bound
    that, so each method taking one message is served as one taking a stream (the same bytes
    on the wire) that reads its message itself."""

    def __init__(self, inner: grpc.GenericRpcHandler, limits: GrpcLimits) -> None:
        self._inner = inner
        self._unary = _MessageDeadlines(
            limits.message_timeout,
            f"The request message did not arrive within {limits.message_timeout:g} s "
            "(request_body_timeout_seconds)",
        )
        self._streams = (
            _MessageDeadlines(
                limits.idle_timeout,
                f"No request message came on this stream for {limits.idle_timeout:g} s "
                "(keepalive_timeout_seconds)",
            )
            if limits.bound_streams
            else None
        )

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(details)
        if handler is None:
            return None
        deserialize, serialize = handler.request_deserializer, handler.response_serializer
        if handler.request_streaming:
            if self._streams is None or not handler.response_streaming:
                return handler
            return grpc.stream_stream_rpc_method_handler(
                partial(self._stream, handler.stream_stream), deserialize, serialize
            )
        if handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(
                partial(self._one_to_stream, handler.unary_stream), deserialize, serialize
            )
        return grpc.stream_unary_rpc_method_handler(
            partial(self._one_to_one, handler.unary_unary), deserialize, serialize
        )

    async def _one_to_one(
        self, method: Callable[[Any, Context], Awaitable[Any]], _: Any, context: Context
    ) -> Any:
        return await method(await self._unary.one(context), context)

    async def _one_to_stream(
        self, method: Callable[[Any, Context], AsyncIterator[Any]], _: Any, context: Context
    ) -> AsyncIterator[Any]:
        async for reply in method(await self._unary.one(context), context):
            yield reply

    async def _stream(
        self,
        method: Callable[[AsyncIterator[Any], Context], AsyncIterator[Any]],
        _: Any,
        context: Context,
    ) -> AsyncIterator[Any]:
        assert self._streams is not None
        async for reply in method(self._streams.each(context), context):
            yield reply


async def start_server(
    handlers: Sequence[grpc.GenericRpcHandler],
    host: str,
    port: int,
    limits: GrpcLimits,
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Serve `handlers` on host:port (TLS with `credentials`) within `limits`; the server and
    its bound port. An address in use is an OSError, as for the HTTP listeners."""
    server = grpc.aio.server(
        options=limits.options(), maximum_concurrent_rpcs=limits.max_connections
    )
    server.add_generic_rpc_handlers([_Bounded(handler, limits) for handler in handlers])
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        if credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, credentials)
    except RuntimeError as error:  # grpcio's way of saying the address is taken
        raise OSError(f"gRPC cannot listen on {address}: {error}") from None
    await server.start()
    return server, bound
