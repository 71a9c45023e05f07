"""The numbers a rollout is judged on, read both ways from a real router: through a real
Prometheus scraping it, and straight from its /metrics (as the operator does without one)."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from marfleet.operator.rollout import Observation
from marfleet.operator.rollout_metrics import PrometheusSource, RouterScrape, Subject

from e2e.bench.router_procs import Client, Proc, router, upstream
from e2e.prometheus.server import LocalPrometheus, Target

pytestmark = pytest.mark.slow

SUBJECT = Subject("shop", "cart", "canary", ("stable",), window_id="step-1", window_seconds=60)


@pytest.fixture(scope="module")
def routed() -> Iterator[Proc]:
    """A router labelled as InferenceService shop/cart, 50/50 over a healthy stable and a
    canary whose every answer is a 500."""
    with upstream("stable") as stable, upstream("canary") as canary:
        urllib.request.urlopen(
            urllib.request.Request(f"{canary.url}/admin/fail?status=500", method="POST")
        ).close()
        backends = {"stable": stable.url, "canary": canary.url}
        args = ("--isvc", "cart", "--namespace", "shop", "--weights", "stable=50,canary=50")
        with router(backends, *args) as proc:
            yield proc


def send(proc: Proc, count: int) -> None:
    client = Client(proc.url)
    for _ in range(count):
        client.request("POST", "/predictions/m", b"{}")
    client.close()


def test_router_scrape_counts_exactly_what_happened_since_the_step_began(routed: Proc) -> None:
    source = RouterScrape(routed.metrics_url)
    send(routed, 10)  # before the step: must not count
    baseline = asyncio.run(source.observe(SUBJECT))
    assert baseline.canary.requests == 0
    send(routed, 200)
    seen = asyncio.run(source.observe(SUBJECT))
    assert (seen.canary.requests, seen.canary.errors) == (100, 100)
    assert (seen.stable.requests, seen.stable.errors) == (100, 0)
    assert seen.stable.quantile_bucket(0.99) is not None
    assert seen.stable.slower_than(1000) == 0
    fresh = asyncio.run(source.observe(Subject(**{**SUBJECT.__dict__, "window_id": "step-2"})))
    assert fresh.canary.requests == 0  # a new step starts a new window


def test_prometheus_gives_the_same_picture(routed: Proc, tmp_path: Path) -> None:
    address = routed.metrics_url.removeprefix("http://").removesuffix("/metrics")
    with LocalPrometheus(tmp_path, [Target("router", address)], interval="1s") as prometheus:
        prometheus.wait_for_targets()
        time.sleep(2)  # two scrapes before the traffic: increase() starts from a known value
        send(routed, 200)
        time.sleep(3)
        seen: Observation = asyncio.run(PrometheusSource(prometheus.url).observe(SUBJECT))
    # increase() extrapolates towards the window's edges, so counts come out somewhat high;
    # the ratios a rollout is judged on hold.
    assert 100 <= seen.canary.requests <= 150
    assert seen.canary.error_ratio == pytest.approx(1.0, abs=0.01)
    assert 100 <= seen.stable.requests <= 150
    assert seen.stable.error_ratio == 0
    assert seen.stable.quantile_bucket(0.99) is not None
    assert seen.canary.quantile_bucket(0.99) is not None
