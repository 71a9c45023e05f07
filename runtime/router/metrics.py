"""The router's Prometheus series (names are the contract in docs/metrics.md).

Built on the runtime's small registry for the same reason the runtime uses it: every request
updates a few series on one event loop, and pre-bound children updated by attribute arithmetic
cost far less than prometheus_client's locked label lookups. Children are bound per variant
once (`for_variant`), so the request path never builds a label tuple.
"""

from __future__ import annotations

from collections.abc import Mapping

from marfleet.runtime.metrics import LATENCY_BUCKETS, Family, Histogram, Registry, Value

LABELS = ("isvc", "namespace", "variant")
ANSWER_LABELS = (*LABELS, "version")
"""Requests and their durations also carry the model version that answered (the upstream's
`x-marfleet-model-version`; empty when it named none or the router answered itself)."""
CODE_CLASSES = ("2xx", "3xx", "4xx", "5xx")
ERROR_REASONS = ("connect", "timeout", "reset")
MAX_VERSIONS = 8
"""Distinct versions labelled per variant (an upstream names whatever it likes): beyond these,
and for names over MAX_VERSION_CHARS, answers are counted under version "other"."""
MAX_VERSION_CHARS = 64
OTHER_VERSION = "other"


class Answers:
    """The request counters and duration histogram of one variant and version."""

    __slots__ = ("by_class", "duration")

    def __init__(self, parent: RouterMetrics, labels: tuple[str, ...]) -> None:
        self.by_class = {c: parent.requests.labels(*labels, c) for c in CODE_CLASSES}
        self.duration: Histogram = parent.duration.histogram(*labels)


class VariantMetrics:
    __slots__ = ("_labels", "_parent", "errors", "mirror_dropped", "mirrored", "versions", "weight")

    def __init__(self, parent: RouterMetrics, variant: str) -> None:
        labels = (parent.isvc, parent.namespace, variant)
        self._parent = parent
        self._labels = labels
        self.versions: dict[str, Answers] = {}
        self.errors = {r: parent.upstream_errors.labels(*labels, r) for r in ERROR_REASONS}
        self.mirrored: Value = parent.mirrored.labels(*labels)
        self.mirror_dropped: Value = parent.mirror_dropped.labels(*labels)
        self.weight: Value = parent.weight.labels(*labels)

    def answered(self, status: int, seconds: float, version: str = "") -> None:
        answers = self.versions.get(version) or self._bind(version)
        answers.by_class.get(f"{status // 100}xx", answers.by_class["5xx"]).inc()
        answers.duration.observe(seconds)

    def _bind(self, version: str) -> Answers:
        if len(version) > MAX_VERSION_CHARS or len(self.versions) >= MAX_VERSIONS:
            version = OTHER_VERSION
            if version in self.versions:
                return self.versions[version]
        answers = self.versions[version] = Answers(self._parent, (*self._labels, version))
        return answers


class RouterMetrics:
    def __init__(self, *, isvc: str, namespace: str) -> None:
        self.isvc = isvc
        self.namespace = namespace
        self.registry = registry = Registry()
        self.requests = registry.add(
            Family(
                "marfleet_router_requests_total",
                "Requests routed to a variant, by status class.",
                "counter",
                (*ANSWER_LABELS, "code_class"),
            )
        )
        self.duration = registry.add(
            Family(
                "marfleet_router_request_duration_seconds",
                "Upstream round trip seen by the router.",
                "histogram",
                ANSWER_LABELS,
                LATENCY_BUCKETS,
            )
        )
        self.upstream_errors = registry.add(
            Family(
                "marfleet_router_upstream_errors_total",
                "Requests the router could not deliver, by reason.",
                "counter",
                (*LABELS, "reason"),
            )
        )
        self.mirrored = registry.add(
            Family(
                "marfleet_router_mirrored_requests_total",
                "Shadow copies sent.",
                "counter",
                LABELS,
            )
        )
        self.mirror_dropped = registry.add(
            Family(
                "marfleet_router_mirror_dropped_total",
                "Shadow copies not sent because too many were already in flight.",
                "counter",
                LABELS,
            )
        )
        self.weight = registry.add(
            Family(
                "marfleet_router_weight", "The weight in force for each variant.", "gauge", LABELS
            )
        )
        self._variants: dict[str, VariantMetrics] = {}

    def for_variant(self, variant: str) -> VariantMetrics:
        metrics = self._variants.get(variant)
        if metrics is None:
            metrics = self._variants[variant] = VariantMetrics(self, variant)
        return metrics

    def weights_changed(self, weights: Mapping[str, int]) -> None:
        for variant, metrics in self._variants.items():
            metrics.weight.set(weights.get(variant, 0))
        for variant, weight in weights.items():
            self.for_variant(variant).weight.set(weight)

    def render(self) -> bytes:
        return self.registry.render()
