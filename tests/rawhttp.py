"""HTTP/1.1 spoken byte by byte over a plain socket, for requests no client library would send
(endless heads, dribbled bytes, half-sent bodies, HTTP/0.9) to the shared HTTP core, whether
it runs in-process (tests/unit/test_http_limits.py, `Running`) or as `marfleet router`/`marfleet
serve`.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from contextlib import suppress
from typing import Any

from marfleet.runtime.server.errors import error_response
from marfleet.runtime.server.http import Handler, HttpLimits, HttpServer


def read_response(
    sock: socket.socket, buffer: bytearray | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One response off the socket (content-length framed); raises on timeout or EOF.

    Pass the same `buffer` to read pipelined responses: what arrived past one is kept.
    """
    data = buffer if buffer is not None else bytearray()
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed without an answer after {bytes(data)!r}")
        data += chunk
    end = data.index(b"\r\n\r\n")
    lines = data[:end].decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(data) < end + 4 + length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    body = bytes(data[end + 4 : end + 4 + length])
    del data[: end + 4 + length]
    return status, headers, body


def send_quietly(sock: socket.socket, data: bytes) -> None:
    """Send what the server still accepts (it may close once it has answered)."""
    with suppress(OSError):
        sock.sendall(data)


class Running:
    """An `HttpServer` serving `app` on a loopback port in a thread of its own (its own event
    loop: asyncio's, or `loop`), for tests that speak to the HTTP core in-process; with `tls`
    it speaks HTTPS; `options` go to HttpServer."""

    def __init__(
        self,
        app: Handler,
        limits: HttpLimits,
        *,
        tls: ssl.SSLContext | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        **options: Any,
    ) -> None:
        self.loop = loop or asyncio.new_event_loop()
        self.tls = tls
        self.server = HttpServer(
            app, limits, error_response=lambda s, m: error_response(s, m), **options
        )
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Running:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(
            self.server.start("127.0.0.1", 0, tls=self.tls), self.loop
        ).result(5)
        self.port = self.server.port
        return self

    def __exit__(self, *_: object) -> None:
        async def stop() -> None:
            self.server.begin_shutdown()
            for connection in list(self.server.connections):
                if connection._transport is not None:
                    connection._transport.abort()
            await self.server.wait_closed(2)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=5)
