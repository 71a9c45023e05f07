"""The HTTP core's request-side limits, over real loopback sockets against a real `HttpServer`.

Each test speaks raw bytes (no client library would send these requests) to a server started
with short limits, so a hang shows up as a socket timeout of a few seconds, not 75.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import closing

import pytest
from marfleet.runtime.server.http import HttpLimits, Request, Response

from tests.rawhttp import Running, read_response, send_quietly

LIMITS = HttpLimits(
    max_body_bytes=100_000,
    max_head_bytes=8 * 1024,
    head_timeout=0.5,
    body_timeout=0.5,
    keepalive_timeout=5.0,
    max_connections=4,
    max_buffered_body_bytes=150_000,
)


BIG = 1_000_000
MEDIUM = 6_000_000  # more than the kernel's send queue takes, so writing pauses
served: list[str] = []  # paths the app answered, in order


async def app(request: Request) -> Response:
    served.append(request.path)
    if request.path == "/big":
        return Response(200, b"x" * BIG)
    if request.path == "/medium":
        return Response(200, b"x" * MEDIUM)
    if request.path == "/raise":
        raise RuntimeError("secret detail")
    if request.path == "/crlf":
        return Response(200, b"{}", headers={"x-split": "a\r\nset-cookie: evil=1"})
    if request.path == "/latin":
        return Response(200, b"{}", headers={"x-name": "caf\u00e9 \u2603"})
    return Response(200, json.dumps({"path": request.path, "size": len(request.body)}).encode())


@pytest.fixture(scope="module")
def server() -> Iterator[Running]:
    with Running(app, LIMITS) as running:
        yield running


def test_a_normal_request_is_answered(server: Running) -> None:
    with closing(server.connect()) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        status, _, body = read_response(sock)
    assert status == 200 and json.loads(body) == {"path": "/echo", "size": 3}


def test_an_endless_header_line_is_431_once_past_the_head_limit(server: Running) -> None:
    with closing(server.connect()) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Grow: ")
        for _ in range(40):  # 400 KiB, far past the 8 KiB limit, never ending the line
            send_quietly(sock, b"a" * 10_240)
        status, headers, body = read_response(sock)
    assert status == 431
    assert headers["connection"] == "close"
    assert "max_request_head_size" in json.loads(body)["message"]


def test_an_endless_url_is_414(server: Running) -> None:
    with closing(server.connect()) as sock:
        sock.sendall(b"GET /")
        for _ in range(40):
            send_quietly(sock, b"a" * 10_240)
        status, _, _ = read_response(sock)
    assert status == 414


def test_many_small_headers_count_against_the_head_limit(server: Running) -> None:
    headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(200))  # ~21 KiB
    with closing(server.connect()) as sock:
        send_quietly(sock, b"GET / HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        status, _, _ = read_response(sock)
    assert status == 431


def test_a_head_that_does_not_complete_in_time_is_408(server: Running) -> None:
    with closing(server.connect()) as sock:
        started = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        for _ in range(8):  # a slowloris: a byte now and then, the head never finishes
            send_quietly(sock, b"X")
            time.sleep(0.1)
        status, _, body = read_response(sock)
    assert status == 408
    assert "request_head_timeout_seconds" in json.loads(body)["message"]
    assert time.monotonic() - started < 4


def test_a_stalled_head_after_an_answer_on_a_kept_connection_is_408_in_head_time(
    server: Running,
) -> None:
    """The connection's deadline moves from head to keep-alive (5 s) and back to the next head
    (0.5 s): the head's, not the keep-alive's, decides."""
    with closing(server.connect()) as sock:
        sock.sendall(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[0] == 200
        time.sleep(0.7)  # past the first head's deadline: the kept connection stays open
        started = time.monotonic()
        sock.sendall(b"GET /second HTTP/1.1\r\nHost: x\r\n")
        status, _, body = read_response(sock)
    assert status == 408
    assert "request_head_timeout_seconds" in json.loads(body)["message"]
    assert LIMITS.head_timeout * 0.8 < time.monotonic() - started < LIMITS.keepalive_timeout / 2


def test_a_silent_connection_is_closed_after_the_head_timeout(server: Running) -> None:
    with closing(server.connect()) as sock:
        started = time.monotonic()
        assert sock.recv(100) == b""  # closed by the server: the head timeout, not keep-alive
        assert time.monotonic() - started < LIMITS.keepalive_timeout / 2


def test_a_body_that_stops_arriving_is_408(server: Running) -> None:
    with closing(server.connect()) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 50000\r\n\r\n" + b"a" * 10)
        status, _, body = read_response(sock)
    assert status == 408
    assert "request_body_timeout_seconds" in json.loads(body)["message"]


def test_a_slow_but_steady_body_is_accepted(server: Running) -> None:
    with closing(server.connect()) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n")
        for _ in range(8):  # 0.8 s in all, longer than the body timeout, but never 0.5 s idle
            time.sleep(0.1)
            sock.sendall(b"a")
        status, _, body = read_response(sock)
    assert status == 200 and json.loads(body)["size"] == 8


def test_connections_over_the_cap_get_503(server: Running) -> None:
    held = [server.connect() for _ in range(LIMITS.max_connections)]
    try:
        for sock in held:
            sock.sendall(b"GET / HTTP/1.1\r\n")  # each holds a slot until its head times out
        time.sleep(0.1)
        with closing(server.connect()) as extra:
            send_quietly(extra, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, body = read_response(extra)
        assert status == 503
        assert headers["retry-after"] == "1"
        assert "max_connections" in json.loads(body)["message"]
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 3
    while server.server.connections and time.monotonic() < deadline:
        time.sleep(0.05)
    with closing(server.connect()) as sock:  # slots are free again
        sock.sendall(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[0] == 200


def test_bodies_still_arriving_are_bounded_per_listener(server: Running) -> None:
    head = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 90000\r\n\r\n"
    with closing(server.connect()) as first, closing(server.connect()) as second:
        first.sendall(head + b"x" * 80_000)  # within max_body_bytes, not yet complete
        time.sleep(0.1)
        send_quietly(second, head + b"x" * 80_000)  # 160,000 bytes arriving: over 150,000
        status, headers, body = read_response(second)
        assert (status, headers["retry-after"]) == (503, "1")
        assert "max_buffered_request_size" in json.loads(body)["message"]
        first.sendall(b"x" * 10_000)  # the first upload was not disturbed
        status, _, body = read_response(first)
        assert (status, json.loads(body)["size"]) == (200, 90_000)
    with closing(server.connect()) as third:  # what the finished and refused ones held is free
        third.sendall(head + b"x" * 90_000)
        status, _, body = read_response(third)
        assert (status, json.loads(body)["size"]) == (200, 90_000)
    assert server.server.buffered_body_bytes == 0


@pytest.mark.parametrize("path", ["/crlf", "/latin"])
def test_an_unsafe_response_header_becomes_a_500_that_names_it(server: Running, path: str) -> None:
    with closing(server.connect()) as sock:
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
        status, headers, body = read_response(sock)
        assert "set-cookie" not in headers
        message = json.loads(body)["message"]
        assert status == 500 and ("x-split" in message or "x-name" in message)
        sock.sendall(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")  # the connection still works
        assert read_response(sock)[0] == 200


def test_an_app_exception_is_a_500_with_a_message_and_no_details(server: Running) -> None:
    with closing(server.connect()) as sock:
        sock.sendall(b"GET /raise HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = read_response(sock)
    message = json.loads(body)["message"]
    assert status == 500
    assert "GET /raise" in message and "log" in message
    assert "secret" not in message and "RuntimeError" not in message


@pytest.mark.parametrize("request_line", [b"GET /\r\n\r\n", b"GET / HTTP/0.9\r\n\r\n"])
def test_http_0_9_is_refused(server: Running, request_line: bytes) -> None:
    with closing(server.connect()) as sock:
        sock.sendall(request_line)
        status, _, _ = read_response(sock)
    assert status == 505


def test_a_chunk_size_that_overflows_is_413(server: Running) -> None:
    with closing(server.connect()) as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"ffffffffffffffffffffff\r\n"
        )
        status, _, _ = read_response(sock)
    assert status == 413


def test_pipelined_requests_are_answered_in_order(server: Running) -> None:
    with closing(server.connect()) as sock:
        sock.sendall(b"".join(b"GET /p%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(3)))
        buffer = bytearray()
        paths = [json.loads(read_response(sock, buffer)[2])["path"] for _ in range(3)]
    assert paths == ["/p0", "/p1", "/p2"]


def _receiving_little(server: Running, size: int) -> socket.socket:
    sock = server.connect()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)  # the kernel keeps little for us
    return sock


def test_a_client_that_reads_no_answers_gets_no_more_served(server: Running) -> None:
    """50 pipelined requests for 1 MB answers, none read: the server answers what the socket
    buffers take, then serves no more (it would otherwise hold 50 MB for a client that reads
    nothing), and drops the connection once nothing was read for the body timeout."""
    served.clear()
    with closing(_receiving_little(server, 4096)) as sock:
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n" * 50)
        time.sleep(LIMITS.body_timeout + 1.0)
        assert 1 <= len(served) <= 10, served  # what the kernel's buffers took, not 50
        assert not server.server.connections  # aborted, its buffered answers dropped
        sock.settimeout(5)
        with pytest.raises(ConnectionResetError):
            while sock.recv(1 << 20):
                pass


def test_a_slow_reader_gets_every_answer(server: Running) -> None:
    """Backpressure, not a cut: a client that reads its pipelined answers, if slowly, gets
    every one."""
    served.clear()
    with closing(_receiving_little(server, 65536)) as sock:
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n" * 8)  # more than kernels hold
        buffer = bytearray()
        sizes = []
        for _ in range(8):
            time.sleep(LIMITS.body_timeout / 2)  # slower than the server, quicker than its limit
            sizes.append(len(read_response(sock, buffer)[2]))
    assert sizes == [BIG] * 8


def test_an_answer_read_slowly_for_longer_than_the_body_timeout_arrives_whole(
    server: Running,
) -> None:
    """The timeout is for a client that reads nothing: one that keeps reading, if slowly,
    gets its answer however long that takes."""
    with closing(_receiving_little(server, 65536)) as sock:
        sock.sendall(b"GET /medium HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        data = bytearray()
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + MEDIUM:
            chunk = sock.recv(65536)
            assert chunk, f"closed after {len(data)} bytes"
            data += chunk
            time.sleep(0.04)
        took = time.monotonic() - started
    assert took > 3 * LIMITS.body_timeout, took  # the answer was paused long enough to count
