"""How the upstream pool hands over an answer's body: whole up to `max_buffered`, else streamed.

Against a real HTTP server on loopback: a router must not hold a variant's answer of any length
in memory, and the operator caps what it reads from the API server (test_kube_client.py)."""

from __future__ import annotations

import asyncio

from aiohttp import web
from marfleet.runtime.router.upstream import Timeouts, UpstreamPool


def exchange(size: int, max_buffered: int) -> tuple[bool, int]:
    """(whether the answer came as a stream, the body's length as read)."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * size)

    async def scenario() -> tuple[bool, int]:
        app = web.Application()
        app.router.add_get("/", handler)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        pool = UpstreamPool(f"http://127.0.0.1:{port}", Timeouts(), max_buffered=max_buffered)
        try:
            reply = await pool.request(b"GET / HTTP/1.1\r\nHost: up\r\n\r\n")
            if reply.stream is None:
                return False, len(reply.body)
            return True, sum([len(chunk) async for chunk in reply.stream])
        finally:
            pool.close()
            await runner.cleanup()

    return asyncio.run(scenario())


def test_an_answer_within_the_limit_arrives_whole() -> None:
    assert exchange(50_000, max_buffered=50_000) == (False, 50_000)


def test_a_longer_answer_is_streamed_and_arrives_complete() -> None:
    assert exchange(3_000_000, max_buffered=50_000) == (True, 3_000_000)
