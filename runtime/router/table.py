"""The routing state in force: which variants exist, their weights, stickiness and mirroring.

`Routing` is what a weight source publishes (plain values, comparable, loggable); `RoutingTable`
is its compiled form, bound to the upstream pools, holding the pickers' running state. A change
builds a new table and swaps it in one assignment, so a request is always routed by one
consistent table and requests in flight finish where they started: a weight change never fails
a request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from marfleet.runtime.router.balance import Sampler, SmoothWeighted
from marfleet.runtime.router.sticky import Rendezvous
from marfleet.runtime.router.upstream import UpstreamPool


@dataclass(frozen=True)
class Mirror:
    variant: str
    percent: int


@dataclass(frozen=True)
class Routing:
    weights: Mapping[str, int]  # variant -> percent of traffic
    sticky_header: str = ""  # lower-case request header whose value pins a variant; "" for none
    mirror: Mirror | None = None

    def describe(self) -> str:
        return ",".join(f"{name}={weight}" for name, weight in self.weights.items())


@dataclass(frozen=True, slots=True)
class Route:
    variant: str
    pool: UpstreamPool


class NoRoute(Exception):
    """No variant can take traffic (every weight is 0); the router answers 503."""


class RoutingTable:
    def __init__(self, routing: Routing, pools: Mapping[str, UpstreamPool]) -> None:
        unknown = sorted(set(routing.weights) - set(pools))
        if unknown:
            raise ValueError(
                f"weights name variants {unknown} that have no upstream; known: {sorted(pools)}"
            )
        self.routing = routing
        self.routes = tuple(Route(name, pools[name]) for name in routing.weights)
        weights = [routing.weights[route.variant] for route in self.routes]
        live = any(weight > 0 for weight in weights)
        self._spread = SmoothWeighted(weights) if live else None
        self._sticky = (
            Rendezvous([r.variant for r in self.routes], weights)
            if live and routing.sticky_header
            else None
        )
        self._sticky_header = routing.sticky_header
        mirror = routing.mirror
        self.mirror: Route | None = None
        self._sample = Sampler(0)
        if mirror is not None and mirror.percent > 0:
            if mirror.variant not in pools:
                raise ValueError(
                    f"mirror variant {mirror.variant!r} has no upstream; known: {sorted(pools)}"
                )
            self.mirror = Route(mirror.variant, pools[mirror.variant])
            self._sample = Sampler(mirror.percent)

    def choose(self, headers: Mapping[str, str]) -> Route:
        if self._spread is None:
            raise NoRoute(f"every variant has weight 0 ({self.routing.describe()})")
        if self._sticky is not None:
            key = headers.get(self._sticky_header)
            if key:
                return self.routes[self._sticky.pick(key)]
        return self.routes[self._spread.pick()]

    def fallback(self, route: Route) -> Route | None:
        """Where a request goes when `route`'s variant cannot even be connected to (a variant
        whose pods are not Ready yet has a Service without endpoints): the heaviest other
        variant that takes traffic, or None."""
        others = [
            r for r in self.routes if r.variant != route.variant and self.routing.weights[r.variant]
        ]
        return max(others, key=lambda r: self.routing.weights[r.variant], default=None)

    def mirror_for(self, route: Route) -> Route | None:
        """The variant a copy of this request goes to, if this request is one to copy."""
        mirror = self.mirror
        if mirror is None or mirror.variant == route.variant or not self._sample():
            return None
        return mirror
