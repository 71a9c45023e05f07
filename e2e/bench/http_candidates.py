"""Which asyncio HTTP stack should carry marfleet's frontend? Measure, don't guess.

Each candidate serves the same trivial endpoint (decode a small JSON body, answer a small JSON
body) in its own process with uvloop; `loadgen` drives it from another process. The number that
matters on a shared 2-core machine is server CPU per request (CPU seconds ÷ requests), with
req/s and p99 alongside. Results go in docs/benchmarks.md.

    .venv/bin/python -m e2e.bench.http_candidates --duration 5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

import psutil

from e2e.bench.procs import free_port, wait_for_port

CANDIDATES = ("marfleet-core", "uvicorn-starlette", "aiohttp")


def serve(name: str, port: int) -> None:
    import uvloop

    if name == "marfleet-core":
        from marfleet.runtime.server.errors import error_response
        from marfleet.runtime.server.http import HttpLimits, HttpServer, Request, Response
        from marfleet.runtime.server.routing import Router

        async def predict(request: Request) -> Response:
            return Response(200, json.dumps({"echo": json.loads(request.body)}).encode())

        async def main() -> None:
            router = Router(error_response=lambda s, m: error_response(s, m))
            router.add("POST", "/predictions/{model}", predict)
            server = HttpServer(
                router, HttpLimits(), error_response=lambda s, m: error_response(s, m)
            )
            await server.start("127.0.0.1", port)
            while True:
                await asyncio.sleep(3600)

        import asyncio

        uvloop.run(main())
    elif name == "uvicorn-starlette":
        import uvicorn
        from starlette.applications import Starlette
        from starlette.requests import Request as StarletteRequest
        from starlette.responses import Response as StarletteResponse
        from starlette.routing import Route

        async def starlette_predict(request: StarletteRequest) -> StarletteResponse:
            body = json.dumps({"echo": json.loads(await request.body())}).encode()
            return StarletteResponse(body, media_type="application/json")

        app = Starlette(routes=[Route("/predictions/{model}", starlette_predict, methods=["POST"])])
        uvicorn.run(
            app,
            host="127.0.0.1",
            port=port,
            loop="uvloop",
            http="httptools",
            log_level="error",
            access_log=False,
        )
    elif name == "aiohttp":
        from aiohttp import web

        async def aiohttp_predict(request: web.Request) -> web.Response:
            body = json.dumps({"echo": json.loads(await request.read())}).encode()
            return web.Response(body=body, content_type="application/json")

        aiohttp_app = web.Application()
        aiohttp_app.router.add_post("/predictions/{model}", aiohttp_predict)
        uvloop.install()
        web.run_app(aiohttp_app, host="127.0.0.1", port=port, access_log=None, print=None)
    else:
        raise SystemExit(f"unknown candidate {name!r}; choose from {', '.join(CANDIDATES)}")


def measure(name: str, concurrency: int, duration: float) -> dict[str, object]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "e2e.bench.http_candidates", "--serve", name, "--port", str(port)]
    )
    try:
        wait_for_port(port, timeout=30)
        with tempfile.NamedTemporaryFile(suffix=".json") as body:
            body.write(b'{"inputs": [[0.1, 0.2, 0.3, 0.4]]}')
            body.flush()
            proc = psutil.Process(server.pid)
            cpu_before = sum(proc.cpu_times()[:2])
            started = time.perf_counter()
            output = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "e2e.bench.loadgen",
                    "--url",
                    f"http://127.0.0.1:{port}/predictions/x",
                    "--body-file",
                    body.name,
                    "--concurrency",
                    str(concurrency),
                    "--duration",
                    str(duration),
                    "--warmup",
                    "0",
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            wall = time.perf_counter() - started
            cpu = sum(proc.cpu_times()[:2]) - cpu_before
        result: dict[str, object] = json.loads(output)
        requests = int(str(result["requests"])) or 1
        result["server_cpu_us_per_request"] = round(cpu / requests * 1e6, 1)
        result["server_cpu_share"] = round(cpu / wall, 2)
        result["candidate"] = name
        return result
    finally:
        server.kill()
        server.wait()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="http_candidates", description=__doc__.splitlines()[0])
    parser.add_argument("--serve", choices=CANDIDATES)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port)
        return 0
    for name in CANDIDATES:
        print(json.dumps(measure(name, args.concurrency, args.duration)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
