"""The rollout loop reads only routers the InferenceService owns. The API is the in-memory fake
of tests/unit/fakekube.py; the numbers come from a source that counts how often it is asked."""

from __future__ import annotations

import asyncio
import copy
from typing import Any, cast

from marfleet.operator import labels, rollout
from marfleet.operator.kube import KubeAPI
from marfleet.operator.rollout import Numbers, Observation
from marfleet.operator.rollout_loop import RolloutLoop
from marfleet.operator.rollout_metrics import Subject
from marfleet.operator.spec import API_VERSION, KIND
from marfleet.operator.store import Store

from tests.unit.fakekube import FakeKubeAPI

NS, NAME, UID = "shop", "cart", "uid-cart"


class CountingSource:
    def __init__(self) -> None:
        self.asked: list[Subject] = []

    async def observe(self, subject: Subject) -> Observation:
        self.asked.append(subject)
        return Observation(Numbers(200, 0), Numbers(200, 0))


def isvc() -> dict[str, Any]:
    variants = [
        {"name": "stable", "weight": 100, "model": {"uri": "https://m/a.mar"}},
        {"name": "canary", "weight": 0, "model": {"uri": "https://m/b.mar"}},
    ]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": NAME, "namespace": NS, "uid": UID, "generation": 1},
        "spec": {"variants": variants, "rollout": {"steps": [50, 100], "stepSeconds": 1}},
    }


def child(kind: str, name: str, owner_uid: str | None, **rest: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": NS, "labels": {labels.ISVC: NAME}}
    if owner_uid:
        meta["ownerReferences"] = [{"uid": owner_uid, "controller": True}]
    return {"apiVersion": "v1", "kind": kind, "metadata": {**meta, **rest.pop("meta", {})}, **rest}


def ready_canary(target: str) -> dict[str, Any]:
    return child(
        "Deployment",
        f"{NAME}-canary",
        UID,
        meta={"annotations": {labels.MODEL_REVISION: target}, "generation": 1},
        spec={"replicas": 1},
        status={
            "observedGeneration": 1,
            "replicas": 1,
            "updatedReplicas": 1,
            "availableReplicas": 1,
            "readyReplicas": 1,
        },
    )


def advance(loop: RolloutLoop, store: Store) -> dict[str, Any]:
    asyncio.run(loop.advance((NS, NAME), copy.deepcopy(store.isvcs[(NS, NAME)])))
    state = rollout.state_of(store.isvcs[(NS, NAME)])
    assert state is not None
    return dict(state.__dict__)


def test_a_router_service_someone_else_holds_is_never_read() -> None:
    api, store, source = FakeKubeAPI(), Store(), CountingSource()
    store.put_isvc(api.put(isvc()))
    events: list[str] = []

    async def record(_obj: Any, _type: str, reason: str, _message: str) -> None:
        events.append(reason)

    clock = iter(range(1000, 2000, 5))
    loop = RolloutLoop(
        cast(KubeAPI, api),
        store,
        source,
        requeue=lambda _key: None,
        record_event=record,
        clock=lambda: float(next(clock)),
    )
    advance(loop, store)
    plan = rollout.plan_of(store.isvcs[(NS, NAME)])
    assert plan is not None
    store.put_child(ready_canary(plan.target))
    store.put_child(child("Service", f"{NAME}-router", owner_uid="someone-else"))
    advance(loop, store)
    state = advance(loop, store)
    assert source.asked == []
    assert (
        "Service cart-router is not (yet) this InferenceService's router Service"
        in (state["message"])
    )
    # the canary's pods are ready, yet its first step (and its weight) waits for readable numbers
    assert state["step_started"] is None and state["holding"] == rollout.METRICS_UNAVAILABLE
    assert rollout.effective_weights(store.isvcs[(NS, NAME)])["canary"] == 0
    assert events.count(rollout.METRICS_UNAVAILABLE) == 1
    store.put_child(child("Service", f"{NAME}-router", owner_uid=UID))
    assert advance(loop, store)["step_started"] is not None
    advance(loop, store)
    assert len(source.asked) == 1
