"""Watch wiring: which resources are watched and where their events go. Nothing else.

Watching never writes (no annotations, no finalizers), and every decision stays in the
controller, where it can be tested without a cluster.
"""

from __future__ import annotations

from . import labels
from .controller import ADDON_CRDS, Controller
from .kube import PLURALS
from .spec import API_VERSION, KIND, PLURAL
from .watch import Handler, Resource

CHILD_KINDS: tuple[tuple[str, str], ...] = (
    ("v1", "ConfigMap"),
    ("v1", "Service"),
    ("v1", "ServiceAccount"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("apps/v1", "Deployment"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("policy/v1", "PodDisruptionBudget"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
)
MANAGED = f"{labels.MANAGED_BY}={labels.OPERATOR}"
ADDON_API_VERSIONS = ("keda.sh/v1alpha1", "monitoring.coreos.com/v1")


def watched(controller: Controller) -> list[tuple[Resource, Handler]]:
    """Every namespaced resource to watch, with the controller method its events go to;
    then the add-on CRDs (cluster-scoped)."""
    resources: list[tuple[Resource, Handler]] = [
        (Resource(API_VERSION, KIND, PLURAL), controller.on_inferenceservice)
    ]
    for api_version, kind in CHILD_KINDS:
        plural = PLURALS[(api_version, kind)]
        addon = api_version in ADDON_API_VERSIONS
        resource = Resource(api_version, kind, plural, MANAGED, addon=addon)
        resources.append((resource, controller.on_child))
    return resources


def addon_crds(controller: Controller) -> list[tuple[Resource, Handler]]:
    crds = ("apiextensions.k8s.io/v1", "CustomResourceDefinition")
    return [
        (
            Resource(
                *crds,
                PLURALS[crds],
                field_selector=f"metadata.name={name}",
                cluster_scoped=True,
            ),
            controller.on_crd,
        )
        for name in ADDON_CRDS
    ]
