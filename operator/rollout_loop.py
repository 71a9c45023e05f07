"""The rollout loop: every `interval` seconds, for each InferenceService with `spec.rollout`,
read the numbers, ask `rollout.decide`, and write what changed.

A step's clock starts only once the canary's Deployment runs its current revision everywhere
(the Deployment carries the revision it was rendered for in an annotation; its rollout must be
complete the way `kubectl rollout status` judges it). Metrics that cannot be read are loud: a
Warning Event and a log line when it starts, the RolloutHolding condition with reason
MetricsUnavailable while it lasts. Without `spec.rollout` (removed, or one variant left) the
spec's weights are in force: the loop removes `status.rollout` and its conditions and says so
in an Event.

Writes go to `status.rollout` and the Rollout* conditions only, under
a field manager of their own (`marfleet-rollout`), so the reconciler's server-side applies of
the rest of the status neither erase nor fight them. After a write the InferenceService is
queued for reconciliation, which publishes the new weights in `status.variants[].weight`
(`rollout.effective_weights`), where the routers pick them up. The state lives in the object,
so a restarted operator carries on where the last one stopped.

Numbers are read only from routers this InferenceService owns (its `<name>-router` Service,
as the store has it, carries its controller reference): a name taken by someone else's Service
would otherwise let that someone's pods judge, or stall, the rollout. Nor does a step start
(and move the canary's weight) while they cannot be read that way. Every InferenceService
is advanced in a task of its own (at most `MAX_CONCURRENT` at a time), each reading bounded by
its source's deadline, so one slow router holds back only its own rollout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import labels, rollout, status
from .kube import KubeAPI, Ref
from .rollout_metrics import (
    MetricsSource,
    MetricsUnavailable,
    PrometheusSource,
    RouterScrape,
    Subject,
)
from .store import Key, Store, owned_by

log = logging.getLogger("marfleet.operator.rollout")

FIELD_MANAGER = "marfleet-rollout"
MAX_CONCURRENT = 16

RecordEvent = Callable[[Mapping[str, Any], str, str, str], Awaitable[None]]
"""(InferenceService, Normal|Warning, reason, message) → a Kubernetes Event."""


class RolloutLoop:
    def __init__(
        self,
        api: KubeAPI,
        store: Store,
        source: MetricsSource,
        *,
        requeue: Callable[[Key], None],
        record_event: RecordEvent,
        interval: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._api = api
        self._store = store
        self._source = source
        self._requeue = requeue
        self._record_event = record_event
        self._interval = interval
        self._clock = clock
        self._slots = asyncio.Semaphore(MAX_CONCURRENT)

    async def run(self) -> None:
        """Every `interval`, start advancing each InferenceService whose previous step is done:
        one that is still reading (a slow router, up to its source's deadline) keeps its own
        pace and holds back no other."""
        running: dict[Key, asyncio.Task[None]] = {}
        try:
            while True:
                for key in [k for k, task in running.items() if task.done()]:
                    del running[key]
                for key, obj in list(self._store.isvcs.items()):
                    if key not in running:
                        running[key] = asyncio.create_task(self._advance(key, obj))
                await asyncio.sleep(self._interval)
        finally:
            for task in running.values():
                task.cancel()
            await asyncio.gather(*running.values(), return_exceptions=True)

    async def _advance(self, key: Key, obj: Mapping[str, Any]) -> None:
        async with self._slots:
            try:
                await self.advance(key, obj)
            except Exception as error:
                log.warning(
                    "rollout step failed, will retry",
                    extra={"isvc": "/".join(key), "error": f"{type(error).__name__}: {error}"},
                )

    async def advance(self, key: Key, obj: Mapping[str, Any]) -> None:
        if obj["metadata"].get("deletionTimestamp"):
            return
        plan = rollout.plan_of(obj)
        state = rollout.state_of(obj)
        if plan is None:
            if state is not None:
                await self._forget(key, obj, state)
            return
        now = self._clock()
        pods = self._canary_pods(key, plan)
        observed: rollout.Observation | rollout.Unavailable | None = None
        if (
            state is not None
            and state.target == plan.target
            and state.phase == rollout.PROGRESSING
            and (state.step_started is not None or pods.ready)
        ):  # a step runs, or is about to start: only if its numbers can be read
            foreign = await self._foreign_router(key, obj)
            if foreign:
                observed = rollout.Unavailable(foreign)
            elif state.step_started is not None:
                subject = Subject(
                    namespace=key[0],
                    isvc=key[1],
                    canary=plan.canary,
                    stable=tuple(plan.others),
                    window_id=f"{state.target}/{state.step}/{state.step_started}",
                    window_seconds=now - state.step_started,
                    version=plan.version,
                )
                try:
                    observed = await self._source.observe(subject)
                except MetricsUnavailable as error:
                    observed = rollout.Unavailable(str(error))
        decision = rollout.decide(plan, state, pods, observed, now)
        if decision.state != state:
            await self._write(key, obj, plan, decision.state, now)
            was = state.holding if state is not None else ""
            if was == rollout.METRICS_UNAVAILABLE != decision.state.holding:
                log.info("rollout metrics readable again", extra={"isvc": "/".join(key)})
        if decision.event is not None:
            await self._tell(key, obj, decision.event)

    def _canary_pods(self, key: Key, plan: rollout.Plan) -> rollout.CanaryPods:
        """Whether the canary Deployment runs `plan`'s revision on every pod, all Ready."""
        name = f"{key[1]}-{plan.canary}"
        deploy = self._store.children_of(key).get(("Deployment", name))
        if deploy is None:
            return rollout.CanaryPods(False, f"Deployment {name} not created yet")
        annotations = deploy["metadata"].get("annotations") or {}
        if annotations.get(labels.MODEL_REVISION) != plan.target:
            return rollout.CanaryPods(False, f"Deployment {name} not yet updated to the revision")
        complete, ready = status.rollout_progress(deploy)
        if not complete:
            return rollout.CanaryPods(False, f"{ready} replicas of the revision ready")
        return rollout.CanaryPods(True)

    async def _forget(self, key: Key, obj: Mapping[str, Any], state: rollout.State) -> None:
        """`spec.rollout` is gone (or one variant is left): the spec's weights are in force;
        remove what this loop wrote and say which weights now apply."""
        result = await self._api.apply_status(obj, {}, manager=FIELD_MANAGER)
        self._store.put_isvc(result)
        self._requeue(key)
        weights = rollout.effective_weights(obj)
        in_force = ", ".join(f"{name}={weight}" for name, weight in weights.items())
        message = f"spec.rollout removed: the spec's weights are in force ({in_force})"
        variants = (obj.get("spec") or {}).get("variants") or []
        canary = variants[-1]["name"] if variants else ""
        reverted = state.phase == rollout.SUCCEEDED and weights.get(canary, 0) < 100
        if reverted:
            message += (
                f"; the rollout had Succeeded with {canary} at 100%: set its spec weight "
                "(or make it the only variant) to keep it"
            )
        event = rollout.Event("Warning" if reverted else "Normal", "RolloutRemoved", message)
        await self._tell(key, obj, event)

    async def _tell(self, key: Key, obj: Mapping[str, Any], event: rollout.Event) -> None:
        extra = {"isvc": "/".join(key), "reason": event.reason, "detail": event.message}
        if event.type == "Warning":
            log.warning("rollout", extra=extra)
        else:
            log.info("rollout", extra=extra)
        await self._record_event(obj, event.type, event.reason, event.message)

    async def _foreign_router(self, key: Key, obj: Mapping[str, Any]) -> str:
        """Why the routers' numbers cannot be trusted (empty: they can). A Service the store
        has not listed yet (just after a restart) is read from the API server, so a restart
        raises no false MetricsUnavailable."""
        name = labels.router_name_of(key[1])
        service = self._store.children_of(key).get(("Service", name))
        if service is None:
            service = await self._api.get(Ref("v1", "Service", key[0], name))
            if service is not None:
                self._store.put_child(service)
        if service is not None and owned_by(service, obj["metadata"].get("uid", "")):
            return ""
        return (
            f"Service {name} is not (yet) this InferenceService's router Service: its "
            "metrics are not read"
        )

    async def _write(
        self, key: Key, obj: Mapping[str, Any], plan: rollout.Plan, state: rollout.State, now: float
    ) -> None:
        previous = (obj.get("status") or {}).get("conditions") or []
        generation = int(obj["metadata"].get("generation", 1))
        body = {
            "rollout": state.to_status(plan),
            "conditions": rollout.conditions(
                state, [c for c in previous if c.get("type") in rollout.CONDITIONS], now, generation
            ),
        }
        result = await self._api.apply_status(obj, body, manager=FIELD_MANAGER)
        self._store.put_isvc(result)
        self._requeue(key)


@dataclass(frozen=True)
class RolloutSettings:
    prometheus_url: str = ""
    """Prometheus to read the routers' series from; empty: read the routers directly."""
    router_metrics_url: str = "http://{isvc}-router.{namespace}.svc:8082/metrics"
    """Where the routers' /metrics are; the headless Service <name>-router resolves to every
    router pod."""
    interval: float = 5.0


def source_for(settings: RolloutSettings) -> MetricsSource:
    if settings.prometheus_url:
        return PrometheusSource(settings.prometheus_url)
    return RouterScrape(settings.router_metrics_url)
