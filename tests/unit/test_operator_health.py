"""The operator's /metrics, /healthz and /readyz, over a real loopback socket: what probes and
Prometheus get, what anything else gets, and the listener's bound on connections."""

from __future__ import annotations

import asyncio
import json

from marfleet.operator.metrics import HEALTH_LIMITS, HealthServer, OperatorMetrics

from e2e.support import free_port


async def exchange(port: int, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def test_probes_follow_their_checks_and_metrics_are_prometheus_text() -> None:
    state = {"alive": True, "ready": False}

    async def main() -> None:
        port = free_port()
        metrics = OperatorMetrics()
        metrics.leader.set(1)
        server = HealthServer(
            metrics,
            host="127.0.0.1",
            port=port,
            alive=lambda: state["alive"],
            ready=lambda: state["ready"],
        )
        await server.start()
        try:
            status, headers, body = await exchange(port, "GET", "/metrics")
            assert status == 200 and headers["content-type"].startswith("text/plain; version=")
            assert b"marfleet_operator_leader 1.0" in body
            assert (await exchange(port, "GET", "/healthz"))[::2] == (200, b"ok\n")
            assert (await exchange(port, "GET", "/readyz"))[::2] == (503, b"not ok\n")
            state["alive"], state["ready"] = False, True
            assert (await exchange(port, "GET", "/healthz"))[::2] == (503, b"not ok\n")
            assert (await exchange(port, "GET", "/readyz"))[::2] == (200, b"ok\n")
            assert (await exchange(port, "HEAD", "/readyz"))[::2] == (200, b"")
            status, _, body = await exchange(port, "POST", "/metrics")
            assert status == 405 and "use GET" in json.loads(body)["message"]
            status, _, body = await exchange(port, "GET", "/status")
            assert status == 404 and "/healthz" in json.loads(body)["message"]
        finally:
            await server.stop()

    asyncio.run(main())


def test_connections_are_bounded() -> None:
    async def main() -> None:
        port = free_port()
        server = HealthServer(
            OperatorMetrics(), host="127.0.0.1", port=port, alive=lambda: True, ready=lambda: True
        )
        await server.start()
        cap = HEALTH_LIMITS.max_connections
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(cap)]
        try:
            await asyncio.sleep(0.1)
            status, headers, _ = await exchange(port, "GET", "/healthz")
            assert (status, headers["retry-after"]) == (503, "1")
        finally:
            for _, writer in held:
                writer.close()
            await server.stop()

    asyncio.run(main())
