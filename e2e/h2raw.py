"""HTTP/2 spoken frame by frame over a plain socket, for gRPC clients no library would be:
one that sends half a message, or one that never opens its flow-control window and so reads
no answer, while it acknowledges every ping. Used by the gRPC limit tests and the soak.
"""

from __future__ import annotations

import socket
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # + SETTINGS
DATA, HEADERS, RST_STREAM, SETTINGS, PING = 0, 1, 3, 4, 6
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload
    )


def _header(name: str, value: str) -> bytes:
    """HPACK: a literal header field, not indexed, new name, no Huffman coding (< 127 bytes)."""
    return bytes([0, len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


def call_headers(path: str, authority: str) -> bytes:
    """A HEADERS frame's block opening a gRPC call to `path`."""
    return b"".join(
        _header(name, value)
        for name, value in [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
    )


def grpc_message(payload: bytes) -> bytes:
    """One length-prefixed gRPC message (not compressed)."""
    return b"\0" + len(payload).to_bytes(4, "big") + payload


def watch(
    sock: socket.socket, limit: float, *, stream: int | None = None
) -> tuple[str, float] | None:
    """Acknowledge the peer's SETTINGS and pings on `sock` and send no WINDOW_UPDATE until the
    peer closes the connection ("closed") or, given `stream`, ends that stream with its
    trailers or a reset ("ended"): which, and after how many seconds; None if neither happens
    within `limit` seconds."""
    started = time.monotonic()
    buffered = b""
    sock.settimeout(0.1)
    while time.monotonic() - started < limit:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            data = b""
        if not data:
            return "closed", time.monotonic() - started
        buffered += data
        while len(buffered) >= 9 and len(buffered) >= 9 + int.from_bytes(buffered[:3], "big"):
            size = int.from_bytes(buffered[:3], "big")
            kind, flags, on = buffered[3], buffered[4], int.from_bytes(buffered[5:9], "big")
            payload, buffered = buffered[9 : 9 + size], buffered[9 + size :]
            try:
                if kind == SETTINGS and not flags & ACK:
                    sock.sendall(frame(SETTINGS, ACK, 0, b""))
                elif kind == PING and not flags & ACK:
                    sock.sendall(frame(PING, ACK, 0, payload))
            except OSError:
                return "closed", time.monotonic() - started
            if on == stream and (kind == RST_STREAM or (kind == HEADERS and flags & END_STREAM)):
                return "ended", time.monotonic() - started
    return None
