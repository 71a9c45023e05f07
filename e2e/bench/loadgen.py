"""Closed-loop HTTP load generator, run as its own process so it never shares the server's loop.

`concurrency` keep-alive connections each send the same request back to back for `duration`
seconds (after `warmup` seconds that are not counted) and the run prints one JSON line:
requests, errors by status, req/s, p50/p99 latency in ms. Responses may be sized by
Content-Length or chunked. It is deliberately small (asyncio
streams + uvloop, no HTTP library) so that it costs the 2-core machine as little CPU as possible:
both servers under test pay the same load-generator tax. Where one process could become the
bottleneck (thousands of requests per second on a GPU machine), `--processes N` forks N such
loops that share the connections between them; their latencies are pooled before the
percentiles are taken.

    python -m e2e.bench.loadgen --url http://127.0.0.1:8080/predictions/mlp \
        --body-file x.json --content-type application/json --concurrency 16 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import uvloop


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    errors: dict[int, int] = field(default_factory=dict)
    counting: bool = False
    answered: int = 0  # warm-up included: what the server's CPU over the whole run was spent on


async def _one_connection(
    host: str, port: int, request: bytes, tally: Tally, stop_at: float
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length, chunked = 0, False
            for line in head.split(b"\r\n"):
                name = line[:18].lower()
                if name.startswith(b"content-length:"):
                    length = int(line[15:])
                elif name == b"transfer-encoding:" and b"chunked" in line[18:].lower():
                    chunked = True
            if chunked:
                await _read_chunks(reader)
            elif length:
                await reader.readexactly(length)
            tally.answered += 1
            if tally.counting:
                tally.latencies.append(time.perf_counter() - started)
                if status != 200:
                    tally.errors[status] = tally.errors.get(status, 0) + 1
    finally:
        writer.close()


async def _read_chunks(reader: asyncio.StreamReader) -> None:
    """Skip a chunked body (Ray Serve's proxy streams its responses) up to its last chunk."""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # no trailers: the blank line that ends the body
            return
        await reader.readexactly(size + 2)


def build_request(url: str, body: bytes, content_type: str, headers: list[str]) -> bytes:
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [
        f"POST {target} HTTP/1.1",
        f"Host: {parts.netloc}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def run(
    url: str, request: bytes, concurrency: int, duration: float, warmup: float
) -> tuple[Tally, float]:
    """Load `url` from `concurrency` connections; the tally and the seconds it counted."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    tally = Tally()
    begin = time.perf_counter()
    stop_at = begin + warmup + duration
    tasks = [
        asyncio.create_task(_one_connection(host, port, request, tally, stop_at))
        for _ in range(concurrency)
    ]
    await asyncio.sleep(warmup)
    tally.counting = True
    counted_from = time.perf_counter()
    await asyncio.gather(*tasks)
    return tally, time.perf_counter() - counted_from


def summarise(runs: list[tuple[Tally, float]], concurrency: int) -> dict[str, object]:
    """One result for runs that went on side by side: req/s add up, latencies are pooled."""
    latencies = sorted(latency for tally, _ in runs for latency in tally.latencies)
    count = len(latencies)
    errors: dict[int, int] = {}
    for tally, _ in runs:
        for status, times in tally.errors.items():
            errors[status] = errors.get(status, 0) + times
    rps = sum(len(tally.latencies) / elapsed for tally, elapsed in runs if elapsed > 0)

    def percentile(p: float) -> float:
        return round(latencies[min(count - 1, int(p * count))] * 1000, 3) if count else 0.0

    return {
        "requests": count,
        "answered_with_warmup": sum(tally.answered for tally, _ in runs),
        "errors": errors,
        "rps": round(rps, 1),
        "p50_ms": percentile(0.50),
        "p99_ms": percentile(0.99),
        "concurrency": concurrency,
        "seconds": round(max(elapsed for _, elapsed in runs), 2),
    }


def _one_process(
    url: str, request: bytes, concurrency: int, duration: float, warmup: float
) -> tuple[Tally, float]:
    return uvloop.run(run(url, request, concurrency, duration, warmup))


def split(concurrency: int, processes: int) -> list[int]:
    """Connections per process, as even as possible, no process without one."""
    processes = max(1, min(processes, concurrency))
    return [concurrency // processes + (i < concurrency % processes) for i in range(processes)]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="loadgen", description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--body-file", type=Path, required=True)
    parser.add_argument("--content-type", default="application/json")
    parser.add_argument("--header", action="append", default=[], help="extra 'Name: value'")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--processes", type=int, default=1, help="load-generating processes")
    args = parser.parse_args(argv)
    request = build_request(args.url, args.body_file.read_bytes(), args.content_type, args.header)
    shares = split(args.concurrency, args.processes)
    jobs = [(args.url, request, share, args.duration, args.warmup) for share in shares]
    if len(jobs) == 1:
        runs = [_one_process(*jobs[0])]
    else:
        with multiprocessing.get_context("fork").Pool(len(jobs)) as pool:
            runs = pool.starmap(_one_process, jobs)
    print(json.dumps(summarise(runs, args.concurrency)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
