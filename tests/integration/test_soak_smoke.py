"""A few seconds of the soak check (e2e/bench/soak.py), so the five-minute `make soak` cannot
rot: the same server, traffic and abuse (less the good model registered and removed, which
costs a worker start), against the server and against a router before it, with the checks
that hold on a short run. The p99 and memory checks need minutes to mean anything and are
left to `make soak`."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e.bench import soak


@pytest.mark.parametrize("through_router", [False, True], ids=["server", "router before it"])
def test_a_short_soak_serves_every_valid_request_and_lets_go_of_the_abuse(
    tmp_path: Path, through_router: bool
) -> None:
    result = soak.run(
        duration=4,
        quiet=1,
        workdir=tmp_path,
        settle=3.5,
        good_model_cycle=False,
        through_router=through_router,
    )
    assert result.valid_failures == 0, result.failure_examples
    assert result.valid_requests > 0
    expected = {"slowloris_timed_out", "head_431", "body_408", "cannotload_500", "broken_400"}
    expected |= {"grpc_silent_closed", "grpc_over_cap_closed", "grpc_oversized_refused"}
    expected |= {"grpc_stalled_ended", "unread_reset"}
    assert expected <= set(result.abuse), result.abuse
    assert result.checks["abuse_answered"], result.abuse
    assert result.checks["tmp_clean"], (result.tmp_entries_start, result.tmp_entries_end)
    assert result.checks["fds_within_10pct"], (result.fds_start, result.fds_end)
