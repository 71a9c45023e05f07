"""The router's gRPC side: every call goes, bytes untouched, to the variant the routing table picks.

The same `RoutingTable` as HTTP decides, so gRPC calls follow the same weights, and the sticky
key is a metadata entry of the same name as the sticky header, hashed the same way: a user
with `x-user: alice` lands on one variant over HTTP and gRPC alike. Messages are never decoded
(serialisers are the identity), so any service the variants serve passes through; the method
name only says whether a call streams (TorchServe's StreamPredictions answers a stream,
StreamPredictions2 streams both ways; everything else is unary). The answer's initial
metadata carries `x-marfleet-variant`, upstream errors keep their code and details, and each
answer is counted per variant with the HTTP status its code stands for (`grpc_codes`).
Mirroring stays HTTP-only. Calls to a variant go round robin over its pods (the addresses its
headless Service's name resolves to), as HTTP requests do. A variant whose HTTP backend is
`https://` is called over TLS here too, verified against the same CA.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from functools import partial
from typing import Any, TypeAlias

import grpc
from marfleet.runtime.router.metrics import RouterMetrics
from marfleet.runtime.router.proxy import VARIANT_HEADER
from marfleet.runtime.router.table import NoRoute, Route, RoutingTable
from marfleet.runtime.server.grpc_codes import http_status

_SERVER_STREAMS = frozenset({"StreamPredictions"})
_BIDI_STREAMS = frozenset({"StreamPredictions2"})
_NOT_FORWARDED = frozenset({"user-agent", "te", "content-type", "grpc-accept-encoding"})

RETIRE_GRACE = 60.0
"""Seconds the calls on a replaced channel (a new upstream CA) have to finish."""
_BALANCED = [("grpc.lb_policy_name", "round_robin")]
"""Calls spread over every address the variant's name resolves to (each pod of a headless
Service); gRPC's default, pick_first, would send all of them down one connection to one pod."""

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


def _identity(data: bytes) -> bytes:
    return data


class GrpcProxy(grpc.GenericRpcHandler):
    """`table()` gives the routing table in force; `targets` maps variant -> host:port; the
    `tls_variants` are called over TLS, verified with `root_certificates` (PEM; None: the
    system's)."""

    def __init__(
        self,
        table: Callable[[], RoutingTable | None],
        targets: Mapping[str, str],
        metrics: RouterMetrics,
        *,
        tls_variants: frozenset[str] = frozenset(),
        root_certificates: bytes | None = None,
        max_request_bytes: int = 6_553_500,
        max_response_bytes: int = 6_553_500,
    ) -> None:
        self._table = table
        self._metrics = metrics
        self._targets = dict(targets)
        self._tls_variants = tls_variants
        self._retiring: set[asyncio.Task[None]] = set()
        # the messages the router's own port takes and gives, not gRPC's 4 MiB default
        self._options = [
            *_BALANCED,
            ("grpc.max_send_message_length", max_request_bytes),
            ("grpc.max_receive_message_length", max_response_bytes),
        ]
        credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
        self._channels = {
            variant: grpc.aio.secure_channel(f"dns:///{target}", credentials, self._options)
            if variant in tls_variants
            else grpc.aio.insecure_channel(f"dns:///{target}", self._options)
            for variant, target in targets.items()
        }

    def trust(self, root_certificates: bytes) -> None:
        """Call the TLS variants over new channels that verify with `root_certificates`; the
        previous channels close once their calls have finished (at most RETIRE_GRACE s)."""
        credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
        for variant in self._tls_variants & set(self._targets):
            old = self._channels[variant]
            target = f"dns:///{self._targets[variant]}"
            self._channels[variant] = grpc.aio.secure_channel(target, credentials, self._options)
            task = asyncio.get_running_loop().create_task(old.close(RETIRE_GRACE))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method: str = details.method
        name = method.rsplit("/", 1)[-1]
        if name in _BIDI_STREAMS:
            return grpc.stream_stream_rpc_method_handler(
                partial(self._stream, method),
                request_deserializer=_identity,
                response_serializer=_identity,
            )
        if name in _SERVER_STREAMS:
            return grpc.unary_stream_rpc_method_handler(
                partial(self._stream, method),
                request_deserializer=_identity,
                response_serializer=_identity,
            )
        return grpc.unary_unary_rpc_method_handler(
            partial(self._unary, method),
            request_deserializer=_identity,
            response_serializer=_identity,
        )

    async def _route(self, context: Context) -> tuple[Route, list[tuple[str, str]]]:
        metadata = [
            (key.lower(), value)
            for key, value in (context.invocation_metadata() or ())
            if not key.startswith(":") and key.lower() not in _NOT_FORWARDED
        ]
        table = self._table()
        if table is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the router has no weights yet")
            raise AssertionError("abort returned")
        try:
            route = table.choose({k: v for k, v in metadata if isinstance(v, str)})
        except NoRoute as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"no variant takes traffic: {error}")
            raise AssertionError("abort returned") from None
        await context.send_initial_metadata(((VARIANT_HEADER, route.variant),))
        return route, metadata

    def _answered(self, variant: str, code: grpc.StatusCode, started: float) -> None:
        self._metrics.for_variant(variant).answered(
            http_status(code), time.perf_counter() - started
        )

    async def _unary(self, method: str, request: bytes, context: Context) -> bytes:
        started = time.perf_counter()
        route, metadata = await self._route(context)
        call = self._channels[route.variant].unary_unary(
            method, request_serializer=_identity, response_deserializer=_identity
        )
        try:
            reply: bytes = await call(request, metadata=metadata, timeout=context.time_remaining())
        except grpc.aio.AioRpcError as error:
            self._answered(route.variant, error.code(), started)
            await context.abort(error.code(), error.details() or "")
            raise AssertionError("abort returned") from None
        self._answered(route.variant, grpc.StatusCode.OK, started)
        return reply

    async def _stream(
        self, method: str, request: bytes | AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[bytes]:
        """A call the upstream answers with a stream: one request (server streaming) or a
        stream of them (bidirectional), relayed message by message."""
        started = time.perf_counter()
        route, metadata = await self._route(context)
        channel = self._channels[route.variant]
        callable_ = channel.unary_stream if isinstance(request, bytes) else channel.stream_stream
        call = callable_(method, request_serializer=_identity, response_deserializer=_identity)(
            request, metadata=metadata, timeout=context.time_remaining()
        )
        async for reply in self._relay(route, call, context, started):
            yield reply

    async def _relay(
        self, route: Route, call: Any, context: Context, started: float
    ) -> AsyncIterator[bytes]:
        """Each upstream message as it arrives; the upstream call ends when the client leaves."""
        try:
            async for reply in call:
                yield reply
        except grpc.aio.AioRpcError as error:
            self._answered(route.variant, error.code(), started)
            await context.abort(error.code(), error.details() or "")
        else:
            self._answered(route.variant, grpc.StatusCode.OK, started)
        finally:
            call.cancel()

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        for task in list(self._retiring):
            task.cancel()
