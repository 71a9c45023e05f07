"""HTTP/1.1 spoken byte by byte over a plain socket, for requests no client library would send
(endless heads, dribbled bytes, half-sent bodies, HTTP/0.9) to the shared HTTP core, whether
it runs in-process (tests/unit/test_http_limits.py) or as `marfleet router`/`marfleet serve`.
"""

from __future__ import annotations

import socket
from contextlib import suppress


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
