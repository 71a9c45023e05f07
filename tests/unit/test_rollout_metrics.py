"""Reading the routers' series into the numbers a rollout is judged on."""

from __future__ import annotations

import pytest
from marfleet.operator.rollout_metrics import (
    Subject,
    Tally,
    observation,
    parse_vector,
    quantile,
    tallies,
)
from marfleet.runtime.router.metrics import RouterMetrics


def router_text() -> str:
    """What a real router exports after 900 stable answers and 100 canary ones (20 of them 5xx)."""
    metrics = RouterMetrics(isvc="cart", namespace="shop")
    for _ in range(900):
        metrics.for_variant("stable").answered(200, 0.02)
    canary = metrics.for_variant("canary")
    for index in range(100):
        canary.answered(503 if index < 20 else 200, 0.08 if index < 50 else 0.4)
    RouterMetrics(isvc="other", namespace="shop").for_variant("canary").answered(500, 1.0)
    return metrics.render().decode()


SUBJECT = Subject("shop", "cart", "canary", ("stable",), "w", 30.0)


def test_quantile_interpolates_within_buckets_like_histogram_quantile() -> None:
    buckets = {0.1: 50.0, 0.5: 90.0, float("inf"): 100.0}
    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.7, buckets) == pytest.approx(0.3)
    assert quantile(0.99, buckets) == pytest.approx(0.5)  # in +Inf: the last finite bound
    assert quantile(0.99, {}) is None
    assert quantile(0.99, {0.1: 0.0, float("inf"): 0.0}) is None


def test_router_text_becomes_per_variant_tallies_of_one_inferenceservice() -> None:
    result = tallies(router_text(), "shop", "cart")
    assert (result["canary"].requests, result["canary"].errors) == (100.0, 20.0)
    assert (result["stable"].requests, result["stable"].errors) == (900.0, 0.0)
    assert result["canary"].buckets[0.1] == 50.0 and result["canary"].buckets[0.5] == 100.0


def test_observation_compares_the_canary_with_the_other_variants_summed() -> None:
    seen = observation(tallies(router_text(), "shop", "cart"), SUBJECT)
    assert seen.canary.error_ratio == pytest.approx(0.2)
    assert seen.canary.p99_ms == pytest.approx(495.0)  # within the (0.25, 0.5] bucket
    assert seen.stable.requests == 900
    assert seen.stable.p99_ms == pytest.approx(24.85)  # within the (0.01, 0.025] bucket


def test_deltas_against_a_baseline_and_counter_resets() -> None:
    base = Tally(100, 5, {0.1: 100.0})
    now = Tally(150, 5, {0.1: 150.0})
    delta = now.minus(base)
    assert (delta.requests, delta.errors, delta.buckets) == (50, 0, {0.1: 50.0})
    assert Tally(10, 0).went_down_from(base)


def test_prometheus_vectors_skip_windows_without_data() -> None:
    result = [
        {"metric": {"variant": "canary"}, "value": [1.0, "12.5"]},
        {"metric": {"variant": "stable"}, "value": [1.0, "NaN"]},
    ]
    assert parse_vector(result) == [({"variant": "canary"}, 12.5)]
