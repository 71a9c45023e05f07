"""The demo's few questions to the apiserver, all through the pinned kubectl of the cluster.

Also the identity a local stand-in of a pod uses: a kubeconfig holding nothing but a token of
the pod's ServiceAccount, what the pod would get in the cluster, so the operator acts with
exactly the chart's RBAC and the router with the Role the operator gave it, never with the
cluster admin's credentials.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from e2e.localcluster import LocalCluster


def get_json(cluster: LocalCluster, *args: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)
    return result


def apply(cluster: LocalCluster, objects: Sequence[Mapping[str, Any]]) -> str:
    text = yaml.safe_dump_all([dict(o) for o in objects], sort_keys=False)
    return cluster.kubectl("apply", "-f", "-", input=text).stdout


def condition(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    for item in (obj.get("status") or {}).get("conditions") or []:
        if item.get("type") == kind:
            return dict(item)
    return {}


def running_pods(cluster: LocalCluster, namespace: str, selector: Mapping[str, str]) -> list[Any]:
    """Running pods matching `selector`, newest first."""
    labels = ",".join(f"{key}={value}" for key, value in selector.items())
    pods = get_json(cluster, "pods", "-n", namespace, "-l", labels)["items"]
    running = [p for p in pods if p.get("status", {}).get("phase") == "Running"]
    return sorted(running, key=lambda p: p["metadata"]["creationTimestamp"], reverse=True)
