"""The router's client side: the runtime's HTTP core, extended with streamed responses.

The core (`marfleet.runtime.server.http`) parses requests, limits them, keeps connections alive
and answers in order; the router reuses all of that. What the core does not do is send a body
whose end is not known yet, and the router must pass streamed answers (a handler's intermediate
responses, sent chunked) through as they arrive. So this module adds exactly that: a
`StreamedResponse`, and a connection that writes it with chunked transfer encoding, waits when
the client reads slowly (the upstream is paused meanwhile), and drops the upstream when the
client goes away. Every other response is written as the core writes it, with `encode_head`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

from marfleet.runtime.server import http
from marfleet.runtime.server.http import HttpServer, Request, Response, encode_head


class Chunks(Protocol):
    def __aiter__(self) -> AsyncIterator[bytes]: ...

    def close(self) -> None: ...


@dataclass(slots=True)
class StreamedResponse(Response):
    """A response whose body arrives as `chunks`; `finished(ok)` runs once it has been sent."""

    chunks: Chunks | None = None
    finished: Callable[[bool], None] | None = None


class _Connection(http._Connection):
    def __init__(self, server: HttpServer) -> None:
        super().__init__(server)
        self._writable = asyncio.Event()
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._writable.set()

    async def _serve(self, request: Request, keep_alive: bool) -> None:
        server = self._server
        try:
            response = await server.app(request)
        except Exception as exc:
            server.log_unhandled(request, exc)
            response = server.error_response(500, f"{type(exc).__name__} while handling request")
        keep_alive = keep_alive and not self.closing
        if isinstance(response, StreamedResponse):
            keep_alive = await self._stream(response, keep_alive)
        elif self._transport is not None:
            self._transport.write(encode_head(response, keep_alive=keep_alive) + response.body)
        transport = self._transport
        if transport is None:
            return
        if server.on_complete is not None:
            server.on_complete(request, response)
        if not keep_alive:
            transport.close()

    async def _stream(self, response: StreamedResponse, keep_alive: bool) -> bool:
        """Relay the chunks; False when the connection cannot be kept (the body was cut)."""
        assert response.chunks is not None
        sent = False
        try:
            if self._transport is None:
                return False
            head = encode_head(response, keep_alive=keep_alive)
            # The core always writes `content-length: <len(body)>` right after the date; a
            # streamed body is delimited by chunks instead.
            self._transport.write(
                head.replace(b"content-length: 0\r\n", b"transfer-encoding: chunked\r\n", 1)
            )
            async for chunk in response.chunks:
                if self._transport is None:
                    return False
                if chunk:
                    self._transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                await self._writable.wait()
            if self._transport is None:
                return False
            self._transport.write(b"0\r\n\r\n")
            sent = True
        except Exception:
            return False  # the upstream broke off mid-body; closing tells the client so
        finally:
            if not sent:
                response.chunks.close()
            if response.finished is not None:
                response.finished(sent)
        return keep_alive


class RouterHttpServer(HttpServer):
    """`HttpServer` whose connections can also send `StreamedResponse`s."""

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), host, port, reuse_address=True, backlog=2048
        )
