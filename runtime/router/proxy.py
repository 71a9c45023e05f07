"""One client request → one upstream exchange with the variant the routing table picks.

Everything end to end passes untouched: method, path, query, body, headers (except the
hop-by-hop ones, which belong to each connection), status and response headers, plus
`x-marfleet-variant: <variant>` on every answer and `x-forwarded-for`. Failures the router
itself sees become TorchServe-style error bodies: 502 when the upstream cannot be reached or
breaks off, 504 when it does not answer in time, 503 when no variant takes traffic. A request
whose variant cannot be connected to — refused (no Ready pod behind its Service yet, say a
canary just added) or not answered within the connect timeout (a Service still sending new
connections to a pod that is gone) — was never sent, so it goes to the heaviest other variant
instead of failing.

Shadow copies (mirroring) are sent after the client's answer is ready, from their own task, and
their answers are read and dropped: they cannot delay or fail the client's request. At most
`mirror_limit` copies are in flight; beyond that copies are dropped and counted, so a slow
shadow variant cannot pile up memory in the router.
"""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import quote

from marfleet.runtime.router.metrics import RouterMetrics, VariantMetrics
from marfleet.runtime.router.table import NoRoute, Route, RoutingTable
from marfleet.runtime.router.upstream import TIMEOUT, Reply, UpstreamError
from marfleet.runtime.server.errors import error_response
from marfleet.runtime.server.http import (
    MODEL_VERSION_HEADER,
    Request,
    Response,
    StreamedResponse,
)

log = logging.getLogger("marfleet.router")

VARIANT_HEADER = "x-marfleet-variant"
SHADOW_HEADER = "x-marfleet-shadow"
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_NOT_FORWARDED = _HOP_BY_HOP | {"content-length", "expect", "x-forwarded-for"}
_NOT_RETURNED = _HOP_BY_HOP | {"content-length", "content-type", "date"}
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
_LOG_EVERY_SECONDS = 5.0


def serialise(request: Request, *, shadow: bool = False) -> bytes:
    """The request as the upstream receives it (the body is de-chunked: Content-Length)."""
    target = quote(request.path, safe=_PATH_SAFE)
    if request.query_string:
        target += "?" + request.query_string
    lines = [f"{request.method} {target} HTTP/1.1"]
    lines += [f"{n}: {v}" for n, v in request.headers.items() if n not in _NOT_FORWARDED]
    client_ip = request.client.rsplit(":", 1)[0]
    forwarded = request.headers.get("x-forwarded-for")
    lines.append(
        f"x-forwarded-for: {forwarded}, {client_ip}"
        if forwarded
        else f"x-forwarded-for: {client_ip}"
    )
    if shadow:
        lines.append(f"{SHADOW_HEADER}: true")
    if request.body or request.method in ("POST", "PUT", "PATCH"):
        lines.append(f"content-length: {len(request.body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + request.body


def answer(reply: Reply, variant: str) -> tuple[str | None, dict[str, str]]:
    """Content type and headers to return to the client for an upstream reply."""
    content_type: str | None = None
    headers: dict[str, str] = {}
    for name, value in reply.headers:
        if name == "content-type":
            content_type = value
        elif name not in _NOT_RETURNED:
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
    headers[VARIANT_HEADER] = variant
    return content_type, headers


class Proxy:
    """The router's request handler; `install` swaps the routing table in force."""

    def __init__(self, metrics: RouterMetrics, *, mirror_limit: int = 64) -> None:
        self._metrics = metrics
        self._table: RoutingTable | None = None
        self._mirror_limit = mirror_limit
        self._mirrors: set[asyncio.Task[None]] = set()
        self._last_logged: dict[tuple[str, str], float] = {}

    @property
    def table(self) -> RoutingTable | None:
        """The routing table in force (None until the first weights arrive)."""
        return self._table

    def install(self, table: RoutingTable) -> None:
        self._table = table
        self._metrics.weights_changed(table.routing.weights)

    async def __call__(self, request: Request) -> Response:
        table = self._table
        if table is None:
            return _error(503, "the router has not received variant weights yet; retry shortly")
        try:
            route = table.choose(request.headers)
        except NoRoute as exc:
            return _error(503, f"no variant takes traffic: {exc}")
        mirror = table.mirror_for(route)
        try:
            return await self._forward(request, route, table.fallback(route))
        finally:
            if mirror is not None:
                self._send_copy(request, mirror)

    async def _forward(self, request: Request, route: Route, fallback: Route | None) -> Response:
        metrics = self._metrics.for_variant(route.variant)
        started = time.perf_counter()
        try:
            reply = await route.pool.request(serialise(request), head_only=request.method == "HEAD")
        except UpstreamError as exc:
            if exc.unsent and fallback is not None:
                # Nothing was sent, so nothing can have happened twice: try the other variant.
                metrics.errors[exc.reason].inc()
                self._log_failure(route.variant, exc)
                return await self._forward(request, fallback, None)
            status = 504 if exc.reason == TIMEOUT else 502
            metrics.errors[exc.reason].inc()
            metrics.answered(status, time.perf_counter() - started)
            self._log_failure(route.variant, exc)
            return _error(status, f"variant {route.variant!r}: {exc.message}", route.variant)
        content_type, headers = answer(reply, route.variant)
        version = headers.get(MODEL_VERSION_HEADER, "")
        if reply.stream is None:
            metrics.answered(reply.status, time.perf_counter() - started, version)
            return Response(reply.status, reply.body, content_type, headers)
        return StreamedResponse(
            reply.status,
            b"",
            content_type,
            headers,
            chunks=reply.stream,
            finished=lambda ok: self._stream_finished(metrics, reply.status, started, ok, version),
        )

    @staticmethod
    def _stream_finished(
        metrics: VariantMetrics, status: int, started: float, ok: bool, version: str
    ) -> None:
        if not ok:
            metrics.errors["reset"].inc()
        metrics.answered(status, time.perf_counter() - started, version)

    def _send_copy(self, request: Request, route: Route) -> None:
        metrics = self._metrics.for_variant(route.variant)
        if len(self._mirrors) >= self._mirror_limit:
            metrics.mirror_dropped.inc()
            return
        metrics.mirrored.inc()
        task = asyncio.get_running_loop().create_task(
            _discard_answer(route, serialise(request, shadow=True))
        )
        self._mirrors.add(task)
        task.add_done_callback(self._mirrors.discard)

    def _log_failure(self, variant: str, exc: UpstreamError) -> None:
        """Warn about upstream failures, at most once per variant and reason every 5 s."""
        key = (variant, exc.reason)
        now = time.monotonic()
        if now - self._last_logged.get(key, -_LOG_EVERY_SECONDS) >= _LOG_EVERY_SECONDS:
            self._last_logged[key] = now
            log.warning(
                "upstream failed",
                extra={"variant": variant, "reason": exc.reason, "error": exc.message},
            )

    async def close(self) -> None:
        for task in list(self._mirrors):
            task.cancel()
        await asyncio.gather(*self._mirrors, return_exceptions=True)


async def _discard_answer(route: Route, data: bytes) -> None:
    try:
        reply = await route.pool.request(data)
        if reply.stream is not None:
            async for _ in reply.stream:
                pass
    except UpstreamError:
        pass  # a shadow's failure is the shadow's business: its own metrics show it


def _error(status: int, message: str, variant: str = "") -> Response:
    types = {
        502: "BadGatewayException",
        503: "ServiceUnavailableException",
        504: "GatewayTimeoutException",
    }
    headers = {VARIANT_HEADER: variant} if variant else None
    return error_response(status, message, type=types[status], headers=headers)
