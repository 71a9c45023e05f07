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
- message sizes: `max_receive_bytes` and `max_send_bytes` (RESOURCE_EXHAUSTED beyond);
- `max_head_bytes`: a call's metadata, its headers (RESOURCE_EXHAUSTED beyond; gRPC's own
  default refuses some calls past 8 KiB and all past 16 KiB, where HTTP takes 64 KiB).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from marfleet.runtime.server.http import HttpLimits

DEFAULT_KEEPALIVE_S = 60.0
_MAX_PING_WAIT_S = 20.0


@dataclass(frozen=True)
class GrpcLimits:
    """What one client may make a gRPC listener hold (see the module docstring)."""

    max_receive_bytes: int
    max_send_bytes: int
    max_connections: int
    max_head_bytes: int
    head_timeout: float
    idle_timeout: float
    keepalive: float = DEFAULT_KEEPALIVE_S

    @classmethod
    def of(cls, http: HttpLimits, *, max_send_bytes: int, keepalive: float) -> GrpcLimits:
        """The gRPC side of a listener's HTTP limits."""
        return cls(
            max_receive_bytes=http.max_body_bytes,
            max_send_bytes=max_send_bytes,
            max_connections=http.max_connections,
            max_head_bytes=http.max_head_bytes,
            head_timeout=http.head_timeout,
            idle_timeout=http.keepalive_timeout,
            keepalive=keepalive,
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
        ]


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


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
    server.add_generic_rpc_handlers(handlers)
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
