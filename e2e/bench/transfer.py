"""What moving a request body to a worker process costs, next to copying it once in memory.

The frontend hands bodies to workers over a Unix socket pair in marfleet's frame format
(`runtime/workers/protocol.py`): the asyncio side writes header and body buffers without joining
them, the worker reads each body straight into its final `bytes`. This measures that round trip
for a few payload sizes against a single in-memory copy (`bytes(bytearray)`), so
docs/benchmarks.md can say how many copies a payload really costs.

    .venv/bin/python -m e2e.bench.transfer
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import socket
import sys
import time
from typing import BinaryIO, cast

import uvloop
from marfleet.runtime.workers.protocol import LENGTH, frame, read_exact, read_header, send_frame

SIZES_MB = (0.1, 1, 8, 32)


def _worker(sock: socket.socket) -> None:
    """A worker process: read a batch frame and its bodies, answer briefly."""
    stream = cast(BinaryIO, sock.makefile("rb", buffering=256 * 1024))
    while True:
        header = read_header(stream)
        if header is None:
            return
        lengths = cast(list[int], header[1])
        for length in lengths:
            read_exact(stream, length)
        send_frame(sock, ("ok",))


async def _round_trips(sock: socket.socket, body: bytes, repeat: int) -> float:
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    started = time.perf_counter()
    for _ in range(repeat):
        writer.writelines(frame(("batch", [len(body)]), [body]))
        prefix = await reader.readexactly(LENGTH.size)
        await reader.readexactly(LENGTH.unpack(prefix)[0])
    elapsed = (time.perf_counter() - started) / repeat
    writer.close()
    return elapsed


def measure(size_mb: float, repeat: int) -> dict[str, float]:
    body = bytes(int(size_mb * 1024 * 1024))
    frontend, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    process = multiprocessing.get_context("fork").Process(target=_worker, args=(worker,))
    process.start()
    worker.close()
    seconds = uvloop.run(_round_trips(frontend, body, repeat))
    process.join(10)
    staging = bytearray(body)
    started = time.perf_counter()
    for _ in range(repeat):
        bytes(staging)
    copy = (time.perf_counter() - started) / repeat
    return {
        "size_mb": size_mb,
        "round_trip_ms": round(seconds * 1000, 3),
        "one_memory_copy_ms": round(copy * 1000, 3),
        "round_trip_in_copies": round(seconds / copy, 1),
        "throughput_gb_s": round(size_mb / 1024 / seconds, 2),
    }


def main(argv: list[str]) -> int:
    for size in SIZES_MB:
        print(json.dumps(measure(size, repeat=max(5, int(200 / size)))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
