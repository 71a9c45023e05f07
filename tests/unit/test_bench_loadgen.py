"""The load generator's arithmetic when several processes share the connections."""

from __future__ import annotations

from e2e.bench.loadgen import Tally, split, summarise


def test_connections_are_shared_evenly_and_no_process_is_left_without_one() -> None:
    assert split(10, 4) == [3, 3, 2, 2]
    assert split(3, 8) == [1, 1, 1]
    assert split(16, 1) == [16]


def test_runs_side_by_side_add_their_rates_and_pool_their_latencies() -> None:
    fast = Tally(latencies=[0.001] * 90, errors={503: 2})
    slow = Tally(latencies=[0.1] * 10, errors={503: 1, 500: 4})
    result = summarise([(fast, 2.0), (slow, 2.5)], concurrency=8)
    assert result["requests"] == 100
    assert result["rps"] == 49.0  # 90 / 2.0 + 10 / 2.5
    assert result["errors"] == {503: 3, 500: 4}
    assert result["p50_ms"] == 1.0
    assert result["p99_ms"] == 100.0
    assert result["seconds"] == 2.5
