"""The operator process: health/metrics endpoint, leader election, then the watches and the
workers.

Every replica serves /healthz, /readyz and /metrics; only the leader watches and reconciles.
The leader starts reconciling once every watch has listed its resource (or after
`SYNC_TIMEOUT`), so that after a restart each InferenceService is judged against all of its
children at once, with no reads and, when nothing changed, no writes.
A replica that loses its lease stops reconciling and exits with status 1 (Kubernetes restarts
it as a standby), because continuing could mean two replicas writing at once.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from . import render
from .controller import Controller, ControllerSettings
from .handlers import addon_crds, watched
from .kube import KubeAPI
from .leader import LeaderElector, LeaseSettings
from .metrics import HealthServer, OperatorMetrics
from .rollout_loop import RolloutLoop, RolloutSettings, source_for
from .watch import Session, Watch

log = logging.getLogger("marfleet.operator")

SYNC_TIMEOUT = 60.0
"""Longest wait for the first lists before reconciling anyway (children not yet listed are
read from the API server one by one)."""


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
    render.load_templates()
    _tune_garbage_collection()
    api = KubeAPI(settings.kubeconfig)
    await api.open()
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
            await elector.release()
        await server.stop()
        await api.close()


async def _lead(
    settings: OperatorSettings,
    api: KubeAPI,
    metrics: OperatorMetrics,
    elector: LeaderElector | None,
    stop: asyncio.Event,
) -> int:
    controller = Controller(api, settings.controller, metrics)
    session = Session(api.credentials)
    await session.open()
    namespaces = settings.namespaces or ("",)
    watches = [
        Watch(session, resource, namespace, handler)
        for resource, handler in watched(controller)
        for namespace in namespaces
    ] + [Watch(session, resource, "", handler) for resource, handler in addon_crds(controller)]
    controller.children_listed = lambda: all(w.synced.is_set() for w in watches)
    tasks: set[asyncio.Task[Any]] = {
        asyncio.create_task(w.run(), name=f"watch {w.name}") for w in watches
    }
    holding = asyncio.create_task(
        elector.hold() if elector else asyncio.Event().wait(), name="leader lease"
    )
    stopping = asyncio.create_task(stop.wait(), name="stop")
    tasks |= {holding, stopping}
    try:
        synced: asyncio.Future[Any] = asyncio.gather(*(w.synced.wait() for w in watches))
        await asyncio.wait(
            {synced, *tasks}, timeout=SYNC_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        if not synced.done():
            synced.cancel()
            pending = [w.name for w in watches if not w.synced.is_set()]
            log.warning("reconciling before every watch has listed", extra={"pending": pending})
        metrics.synced.set(1)
        log.info("watches listed", extra={"inferenceservices": len(controller.store.isvcs)})
        rollouts = RolloutLoop(
            api,
            controller.store,
            source_for(settings.rollout),
            requeue=controller.queue.add,
            record_event=controller.record_event,
            interval=settings.rollout.interval,
        )
        tasks.add(asyncio.create_task(controller.run(), name="workers"))
        tasks.add(asyncio.create_task(rollouts.run(), name="rollouts"))
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await session.close()
        metrics.synced.set(0)
    if holding in done:
        log.error("leadership lost: stopping so that only one replica acts")
        return 1
    for task in done:
        if task is not stopping and not task.cancelled() and task.exception() is not None:
            log.error("stopping: %s failed", task.get_name(), exc_info=task.exception())
            return 1
    return 0


def _tune_garbage_collection() -> None:
    """Collect cycles less often, and never look at what start-up created again.

    Every watch event and API answer is decoded into thousands of small objects (acyclic
    JSON), so with the default threshold (700 allocations) a young-generation collection ran
    for nearly every event, and full collections walked every module and class imported
    (the Kubernetes client's models among them); that was about a quarter of the CPU of a
    reconciliation burst in a replay with the in-memory API (docs/scale.md). Start-up objects
    live as long as the process: `gc.freeze()` moves them out of the collector's sight."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)


GC_YOUNG_THRESHOLD = 10_000


async def _first(main: Awaitable[object], stopper: Awaitable[object]) -> bool:
    """Await `main` unless `stopper` finishes first; True when `main` finished."""
    main_task = asyncio.ensure_future(main)
    stop_task = asyncio.ensure_future(stopper)
    done, pending = await asyncio.wait({main_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    return main_task in done
