"""Where the stable Service sends traffic: the one switch between "router" and "first variant".

With more than one variant, traffic is split by weight in the router (`marfleet router`),
which ships with its own subcommand. Until this build has that subcommand the operator must
not create router pods (they would crash-loop on an unknown command), so the stable Service
targets the first variant and the TrafficReady condition says that weights are not applied.
Once `router` is registered in the CLI the same operator renders the router with no change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from marfleet.runtime.cli import SUBCOMMANDS

from . import labels
from .spec import InferenceService

ROUTER_SUBCOMMAND = "router"


def router_available() -> bool:
    """Whether this build's `marfleet` has the router subcommand the router pods run."""
    return ROUTER_SUBCOMMAND in SUBCOMMANDS


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


def plan(isvc: InferenceService, router_enabled: bool, router_is_ready: bool = True) -> TrafficPlan:
    """Decide the stable Service's target and how TrafficReady describes it.

    A second variant brings the router up, but the stable Service keeps sending to the first
    variant until a router pod is available (`router_is_ready`, observed by the controller):
    pointing it at router pods that do not exist yet would refuse every request meanwhile.
    """
    first = isvc.variants[0].name
    weights = weights_summary(isvc)
    if not isvc.multi_variant:
        return TrafficPlan(
            uses_router=False,
            selector=labels.variant_selector(isvc, first),
            reason="SingleVariant",
            message=f"Service {isvc.name} sends all traffic to variant {first!r}",
        )
    if router_enabled and not router_is_ready:
        return TrafficPlan(
            uses_router=True,
            selector=labels.variant_selector(isvc, first),
            reason="RouterStarting",
            message=(
                f"router {labels.router_name(isvc)} is starting: Service {isvc.name} sends all "
                f"traffic to variant {first!r} until it is available"
            ),
        )
    if router_enabled:
        return TrafficPlan(
            uses_router=True,
            selector=labels.router_selector(isvc),
            reason="Routed",
            message=f"router {labels.router_name(isvc)} splits traffic {weights}",
        )
    return TrafficPlan(
        uses_router=False,
        selector=labels.variant_selector(isvc, first),
        reason="RouterNotAvailable",
        message=(
            f"this marfleet build has no traffic router yet: Service {isvc.name} sends all "
            f"traffic to variant {first!r} and the weights {weights} are not applied"
        ),
    )


def weights_summary(isvc: InferenceService) -> str:
    return ",".join(f"{v.name}={v.weight}" for v in isvc.variants)
