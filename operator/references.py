"""What each rendered child names by name: the order in which children can be created.

The controller creates a child only if its name is free and only after every child it names
exists and is this InferenceService's, so nothing is ever made to point at someone else's
object by name (a Deployment mounting a stranger's ConfigMap, an autoscaler scaling a
stranger's Deployment). Reading the names from the manifests themselves keeps that order
true whatever the templates come to name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import orjson

from .render import ROUTER_BACKENDS_ENV

Ref = tuple[str, str]
"""(kind, name) of a child in the InferenceService's namespace."""


def named_by(child: Mapping[str, Any]) -> set[Ref]:
    """The objects `child` names: a Deployment its ConfigMaps and ServiceAccount (and the
    router's, the variant Services it routes to); a RoleBinding its Role and ServiceAccount
    (the API server checks it against the Role, the operator holding no `bind` verb, and
    refuses it while the Role does not exist); an autoscaler its scale target; a
    PodDisruptionBudget the Deployment of the same name, whose pods it selects. An outline
    (kind, name and intent hash only: see the controller's `_render`) names nothing.

    The order has no cycle: only a Deployment both names and is named, and what it names
    (ConfigMaps, ServiceAccounts, Services) names nothing."""
    kind, name = child["kind"], child["metadata"]["name"]
    spec: Mapping[str, Any] = child.get("spec") or {}
    if kind == "Deployment":
        return _named_by_pod((spec.get("template") or {}).get("spec") or {})
    if kind == "RoleBinding":
        names = {(s["kind"], s["name"]) for s in child.get("subjects", ()) if "namespace" in s}
        if role := child.get("roleRef"):
            names.add((role["kind"], role["name"]))
        return names
    if kind in ("HorizontalPodAutoscaler", "ScaledObject"):
        target = spec.get("scaleTargetRef")
        return {("Deployment", target["name"])} if target else set()
    if kind == "PodDisruptionBudget":
        return {("Deployment", name)}
    return set()


def _named_by_pod(pod: Mapping[str, Any]) -> set[Ref]:
    names = {
        ("ConfigMap", v["configMap"]["name"]) for v in pod.get("volumes", ()) if "configMap" in v
    }
    if pod.get("serviceAccountName"):
        names.add(("ServiceAccount", pod["serviceAccountName"]))
    for container in pod.get("containers", ()):
        for env in container.get("env", ()):
            if env["name"] == ROUTER_BACKENDS_ENV:
                names |= {
                    ("Service", (urlsplit(backend["url"]).hostname or "").split(".")[0])
                    for backend in orjson.loads(env["value"])
                }
    return names
