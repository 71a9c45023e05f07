"""Reading the routers' series into the numbers a rollout is judged on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from marfleet.operator.rollout_metrics import (
    MetricsUnavailable,
    RouterScrape,
    Subject,
    Tally,
    observation,
    parse_vector,
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


def test_router_text_becomes_per_variant_and_version_tallies_of_one_inferenceservice() -> None:
    result = tallies(router_text(), "shop", "cart")
    assert (result["canary", ""].requests, result["canary", ""].errors) == (100.0, 20.0)
    assert (result["stable", ""].requests, result["stable", ""].errors) == (900.0, 0.0)
    assert result["canary", ""].buckets[0.1] == 50.0
    assert result["canary", ""].buckets[0.5] == 100.0


def test_observation_compares_the_canary_with_the_other_variants_summed() -> None:
    seen = observation(tallies(router_text(), "shop", "cart"), SUBJECT)
    assert seen.canary.error_ratio == pytest.approx(0.2)
    assert seen.canary.slower_than(250) == 50  # the 0.4 s answers, above the 0.25 s bound
    assert seen.canary.slower_than(300) == 0  # within (0.25, 0.5]: not certainly slower
    assert seen.canary.quantile_bucket(0.99) == (250, 500)
    assert seen.stable.requests == 900
    assert seen.stable.quantile_bucket(0.99) == (10, 25)


def test_the_canary_side_counts_only_its_version_and_unnamed_answers() -> None:
    per_series = {
        ("canary", "6.0-bad"): Tally(300, 90),
        ("canary", "7.0"): Tally(50, 0),
        ("canary", ""): Tally(2, 2),  # the router's own 502s: no server named a version
        ("stable", "1.0"): Tally(900, 1),
        ("stable", "0.9"): Tally(100, 0),
    }
    seen = observation(per_series, Subject("shop", "cart", "canary", ("stable",), "w", 30, "7.0"))
    assert (seen.canary.requests, seen.canary.errors) == (52, 2)
    assert seen.elsewhere == {"6.0-bad": 300}
    assert seen.stable.requests == 1000
    every = observation(per_series, Subject("shop", "cart", "canary", ("stable",), "w", 30))
    assert every.canary.requests == 352


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


# ----- a hostile /metrics endpoint: real sockets on loopback -----


async def _serve(handler: Callable[[asyncio.StreamWriter], Awaitable[None]]) -> asyncio.Server:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        try:
            await handler(writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0)


async def _trickle(writer: asyncio.StreamWriter) -> None:
    """Headers, then one byte every 0.2 s: each read is quick, the whole body never ends."""
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
    for _ in range(1000):
        writer.write(b"#")
        await writer.drain()
        await asyncio.sleep(0.2)


async def _flood(writer: asyncio.StreamWriter) -> None:
    """A chunked body without end, as fast as the reader takes it."""
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"# " + b"x" * 65534 + b"\n"
    for _ in range(10_000):
        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await writer.drain()


async def _observe_hostile(handler: Callable[[asyncio.StreamWriter], Awaitable[None]]) -> str:
    server = await _serve(handler)
    port = server.sockets[0].getsockname()[1]
    scrape = RouterScrape(
        f"http://127.0.0.1:{port}/metrics", timeout=5.0, deadline=1.0, max_bytes=1024 * 1024
    )
    try:
        with pytest.raises(MetricsUnavailable) as refused:
            await scrape.observe(SUBJECT)
    finally:
        server.close()
    return str(refused.value)


def test_a_trickling_router_costs_the_deadline_not_a_timeout_per_read() -> None:
    started = time.monotonic()
    message = asyncio.run(_observe_hostile(_trickle))
    took = time.monotonic() - started
    assert "no complete answer within 1s" in message
    assert took < 4.0, took


def test_a_flooding_router_is_cut_off_at_the_body_cap() -> None:
    message = asyncio.run(_observe_hostile(_flood))
    assert f"exceed {1024 * 1024} bytes" in message
