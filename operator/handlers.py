"""kopf wiring: which resources are watched and where their events go. Nothing else.

Only low-level event handlers are used: they keep no progress in the watched objects (no
annotations, no finalizers), so watching never writes, and every decision stays in the
controller, where it can be tested without kopf.
"""

from __future__ import annotations

from typing import Any

import kopf

from . import labels
from .controller import ADDON_CRDS, Controller
from .spec import GROUP, PLURAL, VERSION

CHILD_RESOURCES: tuple[tuple[str, str, str], ...] = (
    ("", "v1", "configmaps"),
    ("", "v1", "services"),
    ("", "v1", "serviceaccounts"),
    ("rbac.authorization.k8s.io", "v1", "roles"),
    ("rbac.authorization.k8s.io", "v1", "rolebindings"),
    ("apps", "v1", "deployments"),
    ("autoscaling", "v2", "horizontalpodautoscalers"),
    ("policy", "v1", "poddisruptionbudgets"),
    ("keda.sh", "v1alpha1", "scaledobjects"),
    ("monitoring.coreos.com", "v1", "servicemonitors"),
)


def build_registry(controller: Controller) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    async def login(**_: Any) -> kopf.ConnectionInfo:
        creds = controller.api.credentials()
        return kopf.ConnectionInfo(
            server=creds.server,
            ca_path=creds.ca_path,
            insecure=creds.insecure,
            scheme=creds.scheme,
            token=creds.token,
            certificate_path=creds.certificate_path,
            private_key_path=creds.private_key_path,
        )

    async def inferenceservice(event: kopf.RawEvent, **_: Any) -> None:
        controller.on_inferenceservice(event["type"], event["object"])

    async def child(event: kopf.RawEvent, **_: Any) -> None:
        controller.on_child(event["type"], event["object"])

    async def crd(event: kopf.RawEvent, **_: Any) -> None:
        controller.on_crd(event["type"], event["object"])

    kopf.on.login(id="kubeapi-credentials", registry=registry)(login)
    kopf.on.event(
        group=GROUP, version=VERSION, plural=PLURAL, id="inferenceservices", registry=registry
    )(inferenceservice)
    for group, version, plural in CHILD_RESOURCES:
        kopf.on.event(
            group=group, version=version, plural=plural, id=f"child-{plural}", registry=registry
        )(child)
    kopf.on.event(
        group="apiextensions.k8s.io",
        version="v1",
        plural="customresourcedefinitions",
        id="addon-crds",
        when=lambda name, **_: name in ADDON_CRDS,
        registry=registry,
    )(crd)
    return registry


def kopf_settings() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.posting.enabled = False
    child_plurals = {plural for _, _, plural in CHILD_RESOURCES}
    settings.watching.label_selectors[lambda resource: resource.plural in child_plurals] = (
        f"{labels.MANAGED_BY}={labels.OPERATOR}"
    )
    return settings
