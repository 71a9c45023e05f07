"""Where the stable Service sends traffic: the one switch between "router" and "first variant".

With more than one variant, traffic is split by weight in the router (`marfleet router`); the
stable Service selects the router pods once one of them is available, and the first variant's
pods until then, so adding a variant never leaves the Service without endpoints.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import labels
from .spec import InferenceService

ROUTER_SUBCOMMAND = "router"
ROUTED = "Routed"


@dataclass(frozen=True)
class TrafficPlan:
    uses_router: bool
    selector: dict[str, str]
    reason: str
    message: str


def router_ready(isvc: InferenceService, children: Mapping[tuple[str, str], Any]) -> bool:
    """Whether the router Deployment has a pod that can take the stable Service's traffic."""
    router = children.get(("Deployment", labels.router_name(isvc))) or {}
    return int((router.get("status") or {}).get("availableReplicas", 0)) >= 1


def plan(isvc: InferenceService, router_is_ready: bool = True) -> TrafficPlan:
    """Decide the stable Service's target and how TrafficReady describes it.

    A second variant brings the router up, but the stable Service keeps sending to the first
    variant until a router pod is available (`router_is_ready`, observed by the controller):
    pointing it at router pods that do not exist yet would refuse every request meanwhile.
    """
    first = isvc.variants[0].name
    if not isvc.multi_variant:
        return TrafficPlan(
            uses_router=False,
            selector=labels.variant_selector(isvc, first),
            reason="SingleVariant",
            message=f"Service {isvc.name} sends all traffic to variant {first!r}",
        )
    if not router_is_ready:
        return TrafficPlan(
            uses_router=True,
            selector=labels.variant_selector(isvc, first),
            reason="RouterStarting",
            message=(
                f"router {labels.router_name(isvc)} is starting: Service {isvc.name} sends all "
                f"traffic to variant {first!r} until it is available"
            ),
        )
    return TrafficPlan(
        uses_router=True,
        selector=labels.router_selector(isvc),
        reason=ROUTED,
        message=routed_message(isvc, {v.name: v.weight for v in isvc.variants}),
    )


def routed_message(isvc: InferenceService, weights: Mapping[str, int]) -> str:
    summary = ",".join(f"{v.name}={weights.get(v.name, 0)}" for v in isvc.variants)
    return f"router {labels.router_name(isvc)} splits traffic {summary}"
