"""Headers the HTTP core adds to every answer (`extra_headers`) and the request id it gives
every request (`request_ids`), over real loopback sockets against a real `HttpServer`: on
normal answers, the handler's own headers, streamed answers and the core's own refusals."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import closing

import pytest
from marfleet.runtime.server.http import (
    HttpLimits,
    HttpServer,
    InvalidHeader,
    Request,
    Response,
    StreamedResponse,
)

from tests.rawhttp import Running, read_response, send_quietly

EXTRA = {"Cache-Control": "no-store", "Access-Control-Allow-Origin": "https://app.example"}
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


class Parts:
    def __init__(self) -> None:
        self.parts = [b"one", b"two"]

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._next()

    async def _next(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            yield part

    def close(self) -> None:
        self.parts = []


async def app(request: Request) -> Response:
    """Echoes the request id it was given; /own sets headers of its own; /stream streams."""
    seen = request.headers.get("x-request-id", "")
    if request.path == "/own":
        return Response(200, b"{}", headers={"cache-control": "max-age=5", "X-Request-Id": "mine"})
    if request.path == "/stream":
        return StreamedResponse(200, b"", "text/plain", chunks=Parts())
    return Response(200, json.dumps({"seen": seen}).encode())


@pytest.fixture(scope="module")
def server() -> Iterator[Running]:
    limits = HttpLimits(max_head_bytes=4096, head_timeout=2.0)
    with Running(app, limits, extra_headers=EXTRA, request_ids=True) as running:
        yield running


def ask(server: Running, head: bytes) -> tuple[int, dict[str, str], bytes]:
    with closing(server.connect()) as sock:
        sock.sendall(head)
        return read_response(sock)


def test_every_answer_carries_the_extra_headers_and_a_fresh_request_id(server: Running) -> None:
    status, headers, body = ask(server, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200
    assert headers["cache-control"] == "no-store"
    assert headers["access-control-allow-origin"] == "https://app.example"
    assert UUID.fullmatch(headers["x-request-id"])
    assert json.loads(body)["seen"] == headers["x-request-id"]  # the handler had the same id


def test_a_clients_request_id_is_kept_and_sent_back(server: Running) -> None:
    _, headers, body = ask(server, b"GET /a HTTP/1.1\r\nHost: x\r\nX-Request-Id: trace-42\r\n\r\n")
    assert headers["x-request-id"] == "trace-42"
    assert json.loads(body)["seen"] == "trace-42"


@pytest.mark.parametrize(
    "given", [b"has space", b"x" * 129, b"caf\xe9"], ids=["space", "too long", "latin-1"]
)
def test_a_request_id_that_is_not_a_plain_short_token_is_replaced(
    server: Running, given: bytes
) -> None:
    _, headers, body = ask(
        server, b"GET /a HTTP/1.1\r\nHost: x\r\nX-Request-Id: " + given + b"\r\n\r\n"
    )
    assert UUID.fullmatch(headers["x-request-id"])
    assert json.loads(body)["seen"] == headers["x-request-id"]


def test_the_handlers_own_headers_win(server: Running) -> None:
    raw = b"GET /own HTTP/1.1\r\nHost: x\r\n\r\n"
    with closing(server.connect()) as sock:
        sock.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
    assert head.count("cache-control:") == 1 and "cache-control: max-age=5" in head
    assert head.count("x-request-id:") == 1 and "x-request-id: mine" in head
    assert "access-control-allow-origin: https://app.example" in head


def test_a_streamed_answer_carries_them(server: Running) -> None:
    with closing(server.connect()) as sock:
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while not data.endswith(b"0\r\n\r\n"):
            data += sock.recv(65536)
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
    assert "transfer-encoding: chunked" in head and "cache-control: no-store" in head
    assert UUID.search(head)


def test_a_refused_head_carries_them_with_an_id_of_its_own(server: Running) -> None:
    with closing(server.connect()) as sock:
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\nX-Request-Id: first\r\n\r\n")
        _, first, _ = read_response(sock)
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\nX-Grow: ")  # the next head never ends
        for _ in range(8):
            send_quietly(sock, b"a" * 1024)
        status, headers, _ = read_response(sock)
    assert first["x-request-id"] == "first"
    assert status == 431
    assert headers["access-control-allow-origin"] == "https://app.example"
    assert UUID.fullmatch(headers["x-request-id"])  # not the previous request's


def test_an_extra_header_that_cannot_be_written_is_refused_at_construction() -> None:
    with pytest.raises(InvalidHeader, match="CR, LF or NUL"):
        HttpServer(
            app,
            HttpLimits(),
            error_response=lambda s, m: Response(s),
            extra_headers={"X-A": "a\r\nb"},
        )


def test_without_the_options_nothing_is_added() -> None:
    with Running(app, HttpLimits()) as plain:
        _, headers, body = ask(plain, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert "x-request-id" not in headers and "cache-control" not in headers
    assert json.loads(body)["seen"] == ""
