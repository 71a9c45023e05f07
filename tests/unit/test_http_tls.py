"""The HTTP core over TLS, on asyncio's loop and on uvloop (the one `marfleet serve` and the
router run on), over real loopback sockets with the `ssl` module as the client.

A TLS connection counts against `max_connections` from its accept, while its handshake runs,
so connections that never finish one are bounded as plain ones are; and a client's first bytes
may arrive before the core has handed the connection to TLS, which must not lose them.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
import uvloop
from marfleet.runtime.server.http import HttpLimits, Request, Response

from tests.certificates import self_signed
from tests.rawhttp import Running, read_response

LIMITS = HttpLimits(head_timeout=1.0, body_timeout=1.0, keepalive_timeout=5.0, max_connections=4)


async def app(request: Request) -> Response:
    return Response(200, b"{}")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "tls.crt", directory / "tls.key"
    self_signed(cert, key)
    return cert, key


@pytest.fixture(params=["asyncio", "uvloop"])
def server(request: pytest.FixtureRequest, certificate: tuple[Path, Path]) -> Iterator[Running]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    loop = uvloop.new_event_loop() if request.param == "uvloop" else asyncio.new_event_loop()
    with Running(app, LIMITS, tls=context, loop=loop) as running:
        yield running


def https_get(server: Running, certificate: tuple[Path, Path]) -> int:
    client = ssl.create_default_context(cafile=str(certificate[0]))
    with closing(client.wrap_socket(server.connect(), server_hostname="127.0.0.1")) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        return read_response(sock)[0]


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes (or resets) `sock` within `within` seconds."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_every_handshake_completes(server: Running, certificate: tuple[Path, Path]) -> None:
    """A new connection's ClientHello often arrives before the core hands it over to TLS (on
    uvloop a quarter of them did, and each such handshake hung until that was handled)."""
    assert [https_get(server, certificate) for _ in range(100)] == [200] * 100


def test_connections_in_their_handshake_count_against_max_connections(
    server: Running, certificate: tuple[Path, Path]
) -> None:
    held = [server.connect() for _ in range(LIMITS.max_connections)]
    try:
        for sock in held:
            sock.sendall(b"\x16\x03\x01\x02\x00")  # a ClientHello begun, never finished
        time.sleep(0.2)
        with closing(server.connect()) as extra:  # one more is closed at once
            assert closed_by_server(extra, within=0.5)
        assert server.server.refused_connections >= 1
        started = time.monotonic()
        assert all(closed_by_server(sock, within=3) for sock in held)  # head_timeout
        assert time.monotonic() - started >= LIMITS.head_timeout - 0.3
    finally:
        for sock in held:
            sock.close()
    assert https_get(server, certificate) == 200  # the slots are free again


def test_plain_http_on_the_tls_port_is_closed_and_frees_its_slot(
    server: Running, certificate: tuple[Path, Path]
) -> None:
    with closing(server.connect()) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert closed_by_server(sock, within=2)
    deadline = time.monotonic() + 2
    while server.server.connections and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not server.server.connections
    assert https_get(server, certificate) == 200


def test_clients_that_reset_at_once_leave_nothing_behind(
    server: Running, certificate: tuple[Path, Path]
) -> None:
    """A connection reset before its handshake could begin (a flood's usual shape) must not
    leave a handshake waiting forever (on uvloop each one left two tasks pending)."""

    async def pending() -> int:
        return len(asyncio.all_tasks())

    before = asyncio.run_coroutine_threadsafe(pending(), server.loop).result(5)
    for _ in range(200):
        sock = server.connect()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    deadline = time.monotonic() + 3
    while server.server.connections and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    assert not server.server.connections
    assert asyncio.run_coroutine_threadsafe(pending(), server.loop).result(5) <= before
    assert https_get(server, certificate) == 200
