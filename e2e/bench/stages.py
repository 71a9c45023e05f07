"""Where the time to Ready goes: when each child of the InferenceServices reached each stage.

`make bench-operator ... --stages` (`operator_scale.py`) watches the namespace's Deployments,
ReplicaSets, pods and Services while N InferenceServices come up and records, per object, when
this process first saw it reach each stage: the operator created the Deployment, the Deployment
controller its ReplicaSet, the ReplicaSet controller its pod, the scheduler bound it, KWOK made
it Ready, the Deployment had an available replica; each Service created (cluster-IP and
headless apart, since the API server allocates cluster IPs one at a time). From those, in
seconds since the apply started: each stage's p50/p90/max, and the time between consecutive
stages. So a slow Ready can be put on the component that held it up. The watches cost CPU on
the same machine, so runs with `--stages` are not timed fairly against runs without.
"""

from __future__ import annotations

import sys
import threading
import time
from itertools import pairwise
from typing import Any

from kubernetes import client as k8s
from kubernetes import watch as k8s_watch

ORDER = ("deployment", "replicaset", "pod", "scheduled", "pod_ready", "available")
"""A Deployment's stages in the order they happen."""


class Stages:
    def __init__(self, api: k8s.ApiClient, namespace: str) -> None:
        self.namespace = namespace
        self.seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        core, apps = k8s.CoreV1Api(api), k8s.AppsV1Api(api)
        self._watches = (
            (apps.list_namespaced_deployment, self._deployment),
            (apps.list_namespaced_replica_set, self._replica_set),
            (core.list_namespaced_pod, self._pod),
            (core.list_namespaced_service, self._service),
        )

    def start(self) -> None:
        for lister, handle in self._watches:
            threading.Thread(target=self._run, args=(lister, handle), daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def report(self, started: float) -> dict[str, Any]:
        """Per stage, seconds since `started` (p50/p90/max), and per step between stages."""
        with self._lock:
            seen = dict(self.seen)
        stages = sorted({stage for stage, _ in seen}, key=_stage_order)
        since_start = {
            stage: _spread([t - started for (s, _), t in seen.items() if s == stage])
            for stage in stages
        }
        steps = {
            f"{a}->{b}": _spread(
                [
                    seen[(b, name)] - t
                    for (s, name), t in seen.items()
                    if s == a and (b, name) in seen
                ]
            )
            for a, b in pairwise(ORDER)
        }
        return {"since_apply": since_start, "steps": steps}

    def _mark(self, stage: str, name: str) -> None:
        with self._lock:
            self.seen.setdefault((stage, name), time.monotonic())

    def _deployment(self, obj: Any) -> None:
        self._mark("deployment", obj.metadata.name)
        if (obj.status.available_replicas or 0) >= 1:
            self._mark("available", obj.metadata.name)

    def _replica_set(self, obj: Any) -> None:
        self._mark("replicaset", obj.metadata.name.rsplit("-", 1)[0])

    def _pod(self, obj: Any) -> None:
        deployment = obj.metadata.name.rsplit("-", 2)[0]
        self._mark("pod", deployment)
        if obj.spec.node_name:
            self._mark("scheduled", deployment)
        if any(c.type == "Ready" and c.status == "True" for c in obj.status.conditions or ()):
            self._mark("pod_ready", deployment)

    def _service(self, obj: Any) -> None:
        headless = obj.spec.cluster_ip == "None"
        self._mark("service_headless" if headless else "service_cluster_ip", obj.metadata.name)

    def _run(self, lister: Any, handle: Any) -> None:
        while not self._stop.is_set():
            try:
                for event in k8s_watch.Watch().stream(lister, self.namespace, timeout_seconds=30):
                    handle(event["object"])
                    if self._stop.is_set():
                        return
            except Exception as error:  # a dropped watch: list and watch again
                print(f"stage watch restarted: {error}", file=sys.stderr)


def _stage_order(stage: str) -> int:
    return ORDER.index(stage) if stage in ORDER else len(ORDER)


def _spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    values = sorted(values)
    return {
        "count": len(values),
        "p50": round(values[len(values) // 2], 2),
        "p90": round(values[min(len(values) - 1, int(len(values) * 0.9))], 2),
        "max": round(values[-1], 2),
    }
