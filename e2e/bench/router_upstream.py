"""A tiny stand-in variant for router tests and benchmarks: answers every path itself.

It runs on the same HTTP core as the runtime, so what it costs per request is what the core
costs, nothing more. It says who it is and what it received, so a test can check routing and
pass-through without a model:

    python -m e2e.bench.router_upstream --name canary --port 9002

Every request gets `200 {"variant", "method", "path", "query", "body_bytes", "headers"}`.
Query parameters change the answer: `status=N` answers N, `sleep_ms=N` answers after N ms,
`chunks=N` streams N chunks (chunked encoding, `chunk_ms` apart); `--delay-ms` delays every
answer (a slow shadow variant). `POST /admin/fail?status=N`
makes every later answer N (0: back to normal), to inject a failing handler at run time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator

import uvloop
from marfleet.runtime.server.errors import error_response
from marfleet.runtime.server.http import (
    HttpLimits,
    HttpServer,
    Request,
    Response,
    StreamedResponse,
)


class _Ticker:
    def __init__(self, count: int, interval: float) -> None:
        self._count = count
        self._interval = interval

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        for index in range(self._count):
            if index:
                await asyncio.sleep(self._interval)
            yield json.dumps({"chunk": index}).encode() + b"\n"

    def close(self) -> None:
        pass


class Upstream:
    def __init__(self, name: str, delay: float) -> None:
        self.name = name
        self.delay = delay
        self.failing_status = 0

    async def __call__(self, request: Request) -> Response:
        query = request.query
        if request.path == "/admin/fail":
            self.failing_status = int(query.get("status", "500"))
            return Response(200, b'{"failing": %d}' % self.failing_status)
        status = int(query.get("status", self.failing_status or 200))
        delay = int(query["sleep_ms"]) / 1000 if "sleep_ms" in query else self.delay
        if delay:
            await asyncio.sleep(delay)
        if "chunks" in query:
            ticker = _Ticker(int(query["chunks"]), int(query.get("chunk_ms", "10")) / 1000)
            return StreamedResponse(status, b"", "application/jsonl", chunks=ticker)
        body = {
            "variant": self.name,
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "body_bytes": len(request.body),
            "headers": request.headers,
        }
        return Response(status, json.dumps(body).encode(), headers={"x-upstream": self.name})


async def serve(name: str, host: str, port: int, delay: float) -> None:
    server = HttpServer(Upstream(name, delay), HttpLimits(), error_response=error_response)
    await server.start(host, port)
    await asyncio.Event().wait()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="router_upstream", description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0, help="answer every request this late")
    args = parser.parse_args(argv)
    uvloop.run(serve(args.name, args.host, args.port, args.delay_ms / 1000))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
