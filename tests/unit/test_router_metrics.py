"""The router's request series carry the model version each answer named, within limits."""

from __future__ import annotations

from marfleet.runtime.router.metrics import MAX_VERSIONS, OTHER_VERSION, RouterMetrics

from e2e.bench.router_procs import metric


def test_answers_are_counted_by_the_version_that_gave_them() -> None:
    metrics = RouterMetrics(isvc="cart", namespace="shop")
    canary = metrics.for_variant("canary")
    canary.answered(200, 0.01, "6.0-bad")
    canary.answered(500, 0.01, "6.0-bad")
    canary.answered(200, 0.01, "7.0")
    canary.answered(502, 0.01)  # the router's own answer: no version named
    text = metrics.render().decode()
    requests = "marfleet_router_requests_total"
    assert metric(text, requests, variant="canary", version="6.0-bad") == 2
    assert metric(text, requests, variant="canary", version="6.0-bad", code_class="5xx") == 1
    assert metric(text, requests, variant="canary", version="7.0") == 1
    assert metric(text, requests, variant="canary", version="", code_class="5xx") == 1
    bucket = "marfleet_router_request_duration_seconds_bucket"
    assert metric(text, bucket, variant="canary", version="7.0", le="+Inf") == 1


def test_an_upstream_naming_endless_versions_costs_a_bounded_number_of_series() -> None:
    metrics = RouterMetrics(isvc="cart", namespace="shop")
    canary = metrics.for_variant("canary")
    for index in range(100):
        canary.answered(200, 0.01, f"v{index}")
    canary.answered(200, 0.01, "x" * 1000)
    assert len(canary.versions) == MAX_VERSIONS + 1  # the first ones, and "other"
    text = metrics.render().decode()
    others = metric(text, "marfleet_router_requests_total", version=OTHER_VERSION)
    assert others == 100 - MAX_VERSIONS + 1
    assert "x" * 100 not in text
