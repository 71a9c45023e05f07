"""Where the router's weights come from: its InferenceService, followed through a watch.

The router follows the *effective* weights the operator publishes in `status.variants[].weight`
(during a progressive rollout they differ from the user's `spec`, which is never rewritten).
Before the operator has published any, it uses `spec.variants[].weight`, except while a rollout
is configured: then it waits rather than send a canary the traffic its final step would give.
Stickiness and mirroring come from `spec.routing`.

The watch runs the official client (blocking) in a daemon thread and hands each new `Routing`
to the event loop; it lists, then watches from the list's resourceVersion, and starts over
after errors with a capped backoff. A change therefore reaches the router in the time the API
server takes to send one watch event, well within a second. Only `get`, `list` and `watch` on
this namespace's InferenceServices are needed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, cast

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException
from marfleet.runtime.router.table import Mirror, Routing

log = logging.getLogger("marfleet.router.source")

GROUP = "serving.marfleet.io"
VERSION = "v1alpha1"
PLURAL = "inferenceservices"
_WATCH_SECONDS = 240
_MAX_BACKOFF = 10.0


def routing_from_isvc(obj: Mapping[str, Any]) -> Routing | None:
    """The routing an InferenceService asks for now; None while its weights are not known."""
    spec = obj.get("spec") or {}
    variants = [v["name"] for v in spec.get("variants") or []]
    published = {
        v["name"]: int(v["weight"])
        for v in (obj.get("status") or {}).get("variants") or []
        if "weight" in v
    }
    if variants and all(name in published for name in variants):
        weights = {name: published[name] for name in variants}
    elif spec.get("rollout"):
        return None
    else:
        default = 100 if len(variants) == 1 else 0
        weights = {v["name"]: int(v.get("weight", default)) for v in spec.get("variants") or []}
    if not weights:
        return None
    routing = spec.get("routing") or {}
    mirror = routing.get("mirror")
    return Routing(
        weights=weights,
        sticky_header=str(routing.get("stickyHeader", "")).lower(),
        mirror=Mirror(mirror["variant"], int(mirror.get("percent", 100))) if mirror else None,
    )


def load_kube_config(kubeconfig: str | None) -> k8s.ApiClient:
    """In-cluster credentials in a pod, otherwise the kubeconfig (flag or $KUBECONFIG)."""
    configuration = k8s.Configuration()
    if kubeconfig is None:
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)
            return k8s.ApiClient(configuration)
        except k8s_config.ConfigException:
            pass
    k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    return k8s.ApiClient(configuration)


class IsvcWatch:
    """Calls `publish(routing)` on `loop` for every change of one InferenceService's routing."""

    def __init__(
        self,
        api: k8s.ApiClient,
        namespace: str,
        name: str,
        loop: asyncio.AbstractEventLoop,
        publish: Callable[[Routing], None],
    ) -> None:
        self._api = k8s.CustomObjectsApi(api)
        self._namespace = namespace
        self._name = name
        self._loop = loop
        self._publish = publish
        self._last: Routing | None = None
        self._thread = threading.Thread(target=self._run, name="isvc-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        backoff = 0.5
        while True:
            try:
                self._follow()
                backoff = 0.5
            except ApiException as exc:
                if exc.status != 410:  # 410: the resourceVersion expired; list again at once
                    log.warning(
                        "watching the InferenceService failed",
                        extra=self._where(status=exc.status, error=str(exc.reason)),
                    )
                    time.sleep(backoff)
                    backoff = min(backoff * 2, _MAX_BACKOFF)
            except Exception as exc:
                log.warning(
                    "watching the InferenceService failed",
                    extra=self._where(error=f"{type(exc).__name__}: {exc}"),
                )
                time.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)

    def _follow(self) -> None:
        selector = f"metadata.name={self._name}"
        listing = cast(
            dict[str, Any],
            self._api.list_namespaced_custom_object(
                GROUP, VERSION, self._namespace, PLURAL, field_selector=selector
            ),
        )
        items = listing.get("items") or []
        if not items:
            log.warning("InferenceService not found; waiting for it", extra=self._where())
        for item in items:
            self._seen(item)
        stream = k8s_watch.Watch().stream(
            self._api.list_namespaced_custom_object,
            GROUP,
            VERSION,
            self._namespace,
            PLURAL,
            field_selector=selector,
            resource_version=listing["metadata"]["resourceVersion"],
            timeout_seconds=_WATCH_SECONDS,
        )
        for event in stream:
            if event["type"] in ("ADDED", "MODIFIED"):
                self._seen(event["object"])

    def _seen(self, obj: Mapping[str, Any]) -> None:
        routing = routing_from_isvc(obj)
        if routing is not None and routing != self._last:
            self._last = routing
            self._loop.call_soon_threadsafe(self._publish, routing)

    def _where(self, **fields: object) -> dict[str, object]:
        return {"namespace": self._namespace, "isvc": self._name, **fields}
