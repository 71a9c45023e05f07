"""Assembles and runs one router process: upstream pools, proxy, weight source, two listeners.

Lifecycle: start the metrics listener, install the first routing table (static, or the first
one the watch delivers: the inference port opens only then, so a TCP readiness probe means
"routing"), serve clients, and on SIGTERM or SIGINT stop accepting, let requests in flight
finish (up to `drain_seconds`), then close the upstream connections.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from marfleet.runtime.fdlimit import fit_max_connections
from marfleet.runtime.metrics import CONTENT_TYPE
from marfleet.runtime.router import grpc_proxy
from marfleet.runtime.router.metrics import RouterMetrics
from marfleet.runtime.router.proxy import Proxy
from marfleet.runtime.router.source import IsvcWatch, load_kube_config
from marfleet.runtime.router.table import Routing, RoutingTable
from marfleet.runtime.router.trust import GRACE_SECONDS, UpstreamTrust
from marfleet.runtime.router.upstream import Timeouts, UpstreamPool, upstream_tls
from marfleet.runtime.server.certificates import ServingCertificate
from marfleet.runtime.server.errors import error_response, kserve_errors
from marfleet.runtime.server.grpc_listener import (
    DEFAULT_KEEPALIVE_S,
    DEFAULT_MAX_AGE_S,
    GrpcLimits,
    start_server,
)
from marfleet.runtime.server.http import HttpLimits, HttpServer, Request, Response

log = logging.getLogger("marfleet.router")


@dataclass(frozen=True)
class RouterSettings:
    isvc: str
    namespace: str
    kubeconfig: str | None
    backends: dict[str, str]  # variant -> base URL
    static: Routing | None  # fixed routing; None: follow the InferenceService
    host: str
    port: int
    metrics_port: int
    timeouts: Timeouts
    limits: HttpLimits
    mirror_limit: int
    drain_seconds: float
    grpc_port: int  # 0: no gRPC listener
    grpc_backends: dict[str, str]  # variant -> host:port of its gRPC inference port
    log_level: str
    extra_headers: Mapping[str, str] = field(default_factory=dict)  # on every answer (CORS)
    upstream_ca: bytes | None = None  # PEM CA(s) for https:// backends; None: system store
    upstream_ca_file: Path | None = None  # where upstream_ca was read, read again (trust.py)
    upstream_ca_reload_seconds: float = 30.0
    upstream_ca_grace_seconds: float = GRACE_SECONDS  # how long a replaced CA stays trusted
    grpc_keepalive: float = DEFAULT_KEEPALIVE_S  # a silent gRPC connection is pinged
    grpc_max_connection_age: float = DEFAULT_MAX_AGE_S  # then GOAWAY; as long again to close
    grpc_max_response_bytes: int = HttpLimits.max_body_bytes  # a variant's gRPC message
    certificate: ServingCertificate | None = None  # None: the front speaks plain HTTP and gRPC
    certificate_reload_seconds: float = 30.0


class Router:
    def __init__(self, settings: RouterSettings) -> None:
        self.settings = settings
        self.metrics = RouterMetrics(isvc=settings.isvc, namespace=settings.namespace)
        # a variant whose backend is https:// is reached over TLS on both transports
        secure = {v for v, url in settings.backends.items() if url.startswith("https://")}
        tls = upstream_tls(settings.upstream_ca) if secure else None
        self.pools = {
            variant: UpstreamPool(url, settings.timeouts, tls=tls if variant in secure else None)
            for variant, url in settings.backends.items()
        }
        self._secure = secure
        self.proxy = Proxy(self.metrics, mirror_limit=settings.mirror_limit)
        self.grpc = grpc_proxy.GrpcProxy(
            lambda: self.proxy.table,
            settings.grpc_backends,
            self.metrics,
            tls_variants=frozenset(secure),
            root_certificates=settings.upstream_ca,
            max_request_bytes=settings.limits.max_body_bytes,
            max_response_bytes=settings.grpc_max_response_bytes,
        )
        self.trust: UpstreamTrust | None = None
        if tls is not None and settings.upstream_ca and settings.upstream_ca_file is not None:
            self.trust = UpstreamTrust(
                settings.upstream_ca_file,
                settings.upstream_ca,
                self._trust,
                grace=settings.upstream_ca_grace_seconds,
            )
        self.routed = asyncio.Event()

    def _trust(self, ca_pem: bytes) -> None:
        """Verify the https:// variants with `ca_pem` from now on, over HTTP and gRPC."""
        tls = upstream_tls(ca_pem)
        for variant in self._secure:
            self.pools[variant].use_tls(tls)
        self.grpc.trust(ca_pem)

    def apply(self, routing: Routing) -> None:
        """Put `routing` in force; a routing naming unknown variants is refused and logged."""
        try:
            table = RoutingTable(routing, self.pools)
        except ValueError as exc:
            log.error("routing refused; the previous one stays in force", extra={"error": str(exc)})
            return
        self.proxy.install(table)
        self.routed.set()
        log.info(
            "routing in force",
            extra={
                "weights": routing.describe(),
                "sticky_header": routing.sticky_header,
                "mirror": f"{routing.mirror.variant}={routing.mirror.percent}"
                if routing.mirror
                else "",
            },
        )

    async def metrics_endpoint(self, request: Request) -> Response:
        if request.path != "/metrics":
            return error_response(404, "the router serves /metrics on this port")
        return Response(200, self.metrics.render(), CONTENT_TYPE)

    async def close(self) -> None:
        await self.proxy.close()
        await self.grpc.close()
        for pool in self.pools.values():
            pool.close()


async def run(settings: RouterSettings) -> int:
    # each client connection may hold one to a variant too; the metrics port is one more
    holders = (4 if settings.grpc_port else 2) + 1
    fitted = fit_max_connections(settings.limits.max_connections, holders, log)
    settings = dataclasses.replace(
        settings, limits=dataclasses.replace(settings.limits, max_connections=fitted)
    )
    router = Router(settings)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    metrics_limits = HttpLimits(max_connections=min(fitted, HttpLimits.max_connections))
    metrics = HttpServer(router.metrics_endpoint, metrics_limits, error_response=error_response)
    await metrics.start(settings.host, settings.metrics_port)
    if settings.static is not None:
        router.apply(settings.static)
    else:
        api = load_kube_config(settings.kubeconfig)
        IsvcWatch(api, settings.namespace, settings.isvc, loop, router.apply).start()
        log.info(
            "waiting for the InferenceService's weights before listening",
            extra={"isvc": settings.isvc, "namespace": settings.namespace},
        )
        if not await _first_of(router.routed.wait(), stop.wait()):
            metrics.begin_shutdown()
            return 0
    front = HttpServer(
        kserve_errors(router.proxy),
        settings.limits,
        error_response=error_response,
        on_unhandled=_log_unhandled,
        extra_headers=settings.extra_headers,  # a variant's own headers of the same name win
        request_ids=True,  # given here, so the variant's pod, its handler and logs share it
    )
    certificate = settings.certificate
    grpc_server: grpc.aio.Server | None = None
    grpc_port = 0
    if settings.grpc_port:  # before HTTP: a listening HTTP port means both are routing
        limits = GrpcLimits.of(
            settings.limits,
            max_send_bytes=settings.grpc_max_response_bytes,
            keepalive=settings.grpc_keepalive,
            max_age=settings.grpc_max_connection_age,
            # the router reads a request stream while it relays the answers: the variant
            # bounds the pauses in it
            bound_streams=False,
        )
        grpc_server, grpc_port = await start_server(
            [router.grpc],
            settings.host,
            settings.grpc_port,
            limits,
            credentials=certificate.grpc_credentials() if certificate is not None else None,
        )
    await front.start(
        settings.host, settings.port, tls=certificate.context if certificate is not None else None
    )
    watches = []
    if router.trust is not None:
        watches.append(loop.create_task(router.trust.watch(settings.upstream_ca_reload_seconds)))
    if certificate is not None:
        watches.append(loop.create_task(certificate.watch(settings.certificate_reload_seconds)))
    log.info(
        "router listening",
        extra={
            "port": front.port,
            "grpc_port": grpc_port,
            "tls": certificate is not None,
            "metrics_port": metrics.port,
            "isvc": settings.isvc,
            "namespace": settings.namespace,
            "backends": settings.backends,
        },
    )
    await stop.wait()
    for watch in watches:
        watch.cancel()
    log.info("router draining", extra={"seconds": settings.drain_seconds})
    front.begin_shutdown()
    if grpc_server is not None:
        await grpc_server.stop(settings.drain_seconds)
    drained = await front.wait_closed(settings.drain_seconds)
    metrics.begin_shutdown()
    await router.close()
    log.info("router stopped", extra={"drained": drained})
    return 0


def _log_unhandled(request: Request, exc: Exception) -> None:
    log.error(
        "unhandled error while routing",
        extra={"method": request.method, "path": request.path, "error": repr(exc)},
        exc_info=exc,
    )


async def _first_of(wanted: Awaitable[object], stopper: Awaitable[object]) -> bool:
    """Await `wanted` unless `stopper` finishes first; True when `wanted` did."""
    wanted_task = asyncio.ensure_future(wanted)
    stop_task = asyncio.ensure_future(stopper)
    done, pending = await asyncio.wait(
        {wanted_task, stop_task}, return_when=asyncio.FIRST_COMPLETED
    )
    for task in pending:
        task.cancel()
    return wanted_task in done
