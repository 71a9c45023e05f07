"""Names, labels and selectors of everything the operator creates.

One place, because three parties must agree on them: the renderers that stamp them, the
controller that finds an InferenceService's children by them, and other components (the
router, the chart's dashboards and ServiceMonitors) that select pods by them.
"""

from __future__ import annotations

import hashlib

from .spec import InferenceService

MANAGED_BY = "app.kubernetes.io/managed-by"
OPERATOR = "marfleet-operator"
NAME = "app.kubernetes.io/name"
INSTANCE = "app.kubernetes.io/instance"
COMPONENT = "app.kubernetes.io/component"
ISVC = "serving.marfleet.io/inferenceservice"
VARIANT = "serving.marfleet.io/variant"
SCRAPE = "serving.marfleet.io/metrics"
"""On Services whose `metrics` port the ServiceMonitor should scrape."""

RUNTIME = "runtime"
ROUTER = "router"
ENDPOINT = "endpoint"

INTENT_HASH = "serving.marfleet.io/intent-hash"
CONFIG_HASH = "serving.marfleet.io/config-hash"
MODEL_REVISION = "serving.marfleet.io/model-revision"
"""On a variant's Deployment: the model (name, URI, version) it was rendered for, so a rollout
can tell when the Deployment's pods run the revision it is judging."""


def model_revision(variant: str, uri: str, version: str) -> str:
    return hashlib.sha256(f"{variant}|{uri}|{version}".encode()).hexdigest()[:16]


def variant_object_name(isvc: InferenceService, variant: str) -> str:
    return f"{isvc.name}-{variant}"


def router_name(isvc: InferenceService) -> str:
    return router_name_of(isvc.name)


def router_name_of(isvc_name: str) -> str:
    return f"{isvc_name}-{ROUTER}"


def common(isvc: InferenceService, component: str) -> dict[str, str]:
    """Labels on every object (and pod) the operator creates for `isvc`."""
    return {
        NAME: "marfleet",
        INSTANCE: isvc.name,
        COMPONENT: component,
        MANAGED_BY: OPERATOR,
        ISVC: isvc.name,
    }


def variant_selector(isvc: InferenceService, variant: str) -> dict[str, str]:
    """Selects exactly one variant's model-server pods."""
    return {ISVC: isvc.name, COMPONENT: RUNTIME, VARIANT: variant}


def router_selector(isvc: InferenceService) -> dict[str, str]:
    return {ISVC: isvc.name, COMPONENT: ROUTER}


def variant_labels(isvc: InferenceService, variant: str) -> dict[str, str]:
    return {**common(isvc, RUNTIME), VARIANT: variant}
