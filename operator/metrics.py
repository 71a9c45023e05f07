"""The operator's Prometheus metrics and its HTTP endpoint (/metrics, /healthz, /readyz).

Every replica serves this endpoint, leader or not, so a standby is visibly alive and ready to
take over; `marfleet_operator_leader` says which one acts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from marfleet.runtime.server.errors import error_response
from marfleet.runtime.server.http import HttpLimits, HttpServer, Request, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reconciles = Counter(
            "marfleet_operator_reconciles_total",
            "Reconciliations of InferenceServices, by result.",
            ["result"],
            registry=self.registry,
        )
        self.reconcile_duration = Histogram(
            "marfleet_operator_reconcile_duration_seconds",
            "Time per reconciliation.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.managed = Gauge(
            "marfleet_operator_managed_inferenceservices",
            "InferenceServices seen.",
            registry=self.registry,
        )
        self.writes = Counter(
            "marfleet_operator_writes_total",
            "Writes to the API server, by verb (apply, delete, status, event) and kind.",
            ["verb", "kind"],
            registry=self.registry,
        )
        self.renders = Counter(
            "marfleet_operator_renders_total",
            "Renders of an InferenceService's children (an input changed, or a child did).",
            registry=self.registry,
        )
        self.watch_events = Counter(
            "marfleet_operator_watch_events_total",
            "Watch events received (list items included), by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.leader = Gauge(
            "marfleet_operator_leader",
            "1 while this replica holds the leader lease and acts, else 0.",
            registry=self.registry,
        )
        self.synced = Gauge(
            "marfleet_operator_watches_synced",
            "1 once every watch of the leader has listed its resource and reconciling started.",
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "marfleet_operator_queue_depth",
            "InferenceServices waiting for a reconciliation.",
            registry=self.registry,
        )
        for result in ("success", "error"):
            self.reconciles.labels(result=result)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def count(self, counter: Counter, *label_values: str) -> None:
        """Add one to `counter` for these label values. The labelled child is kept, as
        `labels()` costs more than the increment and runs for every watch event and write."""
        key = (id(counter), label_values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = counter.labels(*label_values)
        child.inc()


HEALTH_LIMITS = HttpLimits(max_body_bytes=64 * 1024, max_connections=100)
"""Probes and scrapes send no bodies and come from a few clients."""


class HealthServer:
    """Serves /metrics always, /healthz while `alive()`, /readyz while `ready()`, on the
    runtime's HTTP core (the server's and the router's), with its limits."""

    def __init__(
        self,
        metrics: OperatorMetrics,
        *,
        host: str,
        port: int,
        alive: Callable[[], bool],
        ready: Callable[[], bool],
    ) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self.alive = alive
        self.ready = ready
        self._server: HttpServer | None = None

    async def start(self) -> None:
        self._server = HttpServer(self._serve, HEALTH_LIMITS, error_response=error_response)
        await self._server.start(self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.begin_shutdown()
            await self._server.wait_closed(timeout=5)

    async def _serve(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return error_response(405, f"{request.method} is not allowed here: use GET")
        if request.path == "/metrics":
            body = generate_latest(self.metrics.registry)
            return Response(200, body, CONTENT_TYPE_LATEST)
        probes = {"/healthz": self.alive, "/readyz": self.ready}
        if request.path in probes:
            ok = probes[request.path]()
            return Response(200 if ok else 503, b"ok\n" if ok else b"not ok\n", "text/plain")
        return error_response(
            404, f"{request.path} is not served: try /metrics, /healthz or /readyz"
        )
