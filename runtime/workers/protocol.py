"""The frame format between the frontend and a worker process over a Unix socket pair.

A frame is a 4-byte big-endian length, a pickled header tuple, then the raw bodies the header
lists (their lengths are in the header). Bodies never pass through pickle or JSON: the sender
hands them to the kernel as they are (`writelines` / `sendmsg`, no user-space join) and the
receiver reads each straight into its final `bytes` object, so a 6 MB image costs one copy into
the socket and one out of it. Both ends are marfleet processes of the same install, so pickle is
safe here; nothing from the network is ever unpickled (bodies stay bytes).

Messages (header tuples):
    frontend -> worker  ("batch", batch_id, explain, [(request_id, content_type, headers,
                         parameters, body_length), ...]) + bodies
                        ("stop",)
    worker -> frontend  ("ready", pid, load_seconds)
                        ("load_failed", message)
                        ("results", batch_id, [(status, content_type, headers, body_length), ...],
                         [(name, value, unit, dimensions, kind), ...]) + bodies
                        ("partial", batch_id, [(index, status, content_type, headers,
                         body_length)]) + body   (an intermediate response, before "results")

Cancellations travel on a second socket pair of kind SOCK_SEQPACKET, one `CANCEL` record
(batch_id, index) per message: the worker is busy inside the handler when they matter, so it
polls that socket without blocking between a streaming handler's parts, and a record never has
to be told apart from a frame half-read into a buffer.
"""

from __future__ import annotations

import pickle
import socket
import struct
from collections.abc import Sequence
from typing import BinaryIO

LENGTH = struct.Struct("!I")
CANCEL = struct.Struct("!QI")  # batch_id, index in the batch

Header = tuple[object, ...]


def frame(header: Header, bodies: Sequence[bytes] = ()) -> list[bytes]:
    """The buffers of one frame, to be written in order without joining them."""
    encoded = pickle.dumps(header, protocol=pickle.HIGHEST_PROTOCOL)
    return [LENGTH.pack(len(encoded)), encoded, *bodies]


def send_frame(sock: socket.socket, header: Header, bodies: Sequence[bytes] = ()) -> None:
    """Blocking vectored send of one frame (the worker side)."""
    pending = [memoryview(buffer) for buffer in frame(header, bodies) if buffer]
    while pending:
        sent = sock.sendmsg(pending[:512])
        while sent and pending:
            if sent >= len(pending[0]):
                sent -= len(pending.pop(0))
            else:
                pending[0] = pending[0][sent:]
                sent = 0


def read_header(stream: BinaryIO) -> Header | None:
    """Blocking read of one header (the worker side); None at end of stream."""
    prefix = stream.read(LENGTH.size)
    if len(prefix) < LENGTH.size:
        return None
    (length,) = LENGTH.unpack(prefix)
    header: Header = pickle.loads(read_exact(stream, length))
    return header


def read_exact(stream: BinaryIO, length: int) -> bytes:
    data = stream.read(length)
    if len(data) != length:
        raise EOFError(f"worker socket closed after {len(data)} of {length} bytes")
    return data


def read_cancellations(control: socket.socket, batch_id: object) -> set[int]:
    """Indexes of `batch_id` cancelled since the last call (non-blocking; the worker side)."""
    indexes: set[int] = set()
    while True:
        try:
            record = control.recv(CANCEL.size)
        except (BlockingIOError, InterruptedError):
            return indexes
        if len(record) != CANCEL.size:
            return indexes  # the frontend closed its end
        cancelled_batch, index = CANCEL.unpack(record)
        if cancelled_batch == batch_id:
            indexes.add(index)
