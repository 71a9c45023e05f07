"""The operator process: health/metrics endpoint, leader election, then kopf and the workers.

Every replica serves /healthz, /readyz and /metrics; only the leader watches and reconciles.
A replica that loses its lease stops reconciling and exits with status 1 (Kubernetes restarts
it as a standby), because continuing could mean two replicas writing at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable
from contextlib import suppress
from dataclasses import dataclass

import kopf
from kopf._core.engines.peering import Identity  # the NewType kopf.operator() declares

from .controller import Controller, ControllerSettings
from .handlers import build_registry, kopf_settings
from .kube import KubeAPI
from .leader import LeaderElector, LeaseSettings
from .metrics import HealthServer, OperatorMetrics
from .rollout_loop import RolloutLoop, RolloutSettings, source_for

log = logging.getLogger("marfleet.operator")


@dataclass(frozen=True)
class OperatorSettings:
    controller: ControllerSettings
    namespaces: tuple[str, ...]
    """Namespaces to serve; empty means all."""
    kubeconfig: str | None
    host: str
    port: int
    lease: LeaseSettings | None
    """None disables leader election (a single replica)."""
    rollout: RolloutSettings


async def run(settings: OperatorSettings) -> int:
    api = KubeAPI(settings.kubeconfig)
    metrics = OperatorMetrics()
    failed = asyncio.Event()
    server = HealthServer(
        metrics,
        host=settings.host,
        port=settings.port,
        alive=lambda: not failed.is_set(),
        ready=lambda: not failed.is_set(),
    )
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    elector = LeaderElector(api, settings.lease) if settings.lease else None
    log.info(
        "operator starting",
        extra={"namespaces": list(settings.namespaces) or "all", "port": settings.port},
    )
    try:
        if elector is not None and not await _first(elector.acquire(), stop.wait()):
            return 0
        metrics.leader.set(1)
        code = await _lead(settings, api, metrics, elector, stop)
        if code:
            failed.set()
        return code
    finally:
        metrics.leader.set(0)
        if elector is not None:
            await asyncio.to_thread(elector.release)
        await server.stop()
        api.close()


async def _lead(
    settings: OperatorSettings,
    api: KubeAPI,
    metrics: OperatorMetrics,
    elector: LeaderElector | None,
    stop: asyncio.Event,
) -> int:
    controller = Controller(api, settings.controller, metrics)
    kopf_task = asyncio.create_task(
        kopf.operator(
            registry=build_registry(controller),
            settings=kopf_settings(),
            standalone=True,
            # kopf would otherwise ask the passwd database for a user name, which a container
            # running as an arbitrary uid (65532 in the chart) may not have.
            identity=Identity(settings.controller.identity),
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            stop_flag=stop,
        )
    )
    workers = asyncio.create_task(controller.run())
    rollouts = RolloutLoop(
        api,
        controller.store,
        source_for(settings.rollout),
        requeue=controller.queue.add,
        record_event=controller.record_event,
        interval=settings.rollout.interval,
    )
    rollout_task = asyncio.create_task(rollouts.run())
    holding = asyncio.create_task(elector.hold() if elector else asyncio.Event().wait())
    done, _ = await asyncio.wait(
        {kopf_task, workers, holding, rollout_task}, return_when=asyncio.FIRST_COMPLETED
    )
    stop.set()
    for task in (workers, holding, rollout_task):
        task.cancel()
    with suppress(asyncio.CancelledError, Exception):
        await asyncio.wait_for(kopf_task, timeout=10)
    if holding in done:
        log.error("leadership lost: stopping so that only one replica acts")
        return 1
    failure = kopf_task.exception() if kopf_task.done() and not kopf_task.cancelled() else None
    if kopf_task in done and failure is not None:
        log.error("watching stopped", exc_info=failure)
        return 1
    return 0


async def _first(main: Awaitable[object], stopper: Awaitable[object]) -> bool:
    """Await `main` unless `stopper` finishes first; True when `main` finished."""
    main_task = asyncio.ensure_future(main)
    stop_task = asyncio.ensure_future(stopper)
    done, pending = await asyncio.wait({main_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    return main_task in done
