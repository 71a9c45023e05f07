"""The rollout decision: a pure function of the plan, the state, the numbers and the clock."""

from __future__ import annotations

from typing import Any

import pytest
from marfleet.operator.rollout import (
    ABORTED,
    PROGRESSING,
    SUCCEEDED,
    Analysis,
    Numbers,
    Observation,
    Plan,
    State,
    conditions,
    decide,
    effective_weights,
    plan_of,
    state_of,
)

T0 = 1_900_000_000.0


def isvc(
    rollout: dict[str, Any] | None = None,
    weights: tuple[int, ...] = (100, 0),
    canary_version: str = "2.0",
    status_rollout: dict[str, Any] | None = None,
) -> dict[str, Any]:
    names = ["stable", "canary"] if len(weights) == 2 else ["a", "b", "canary"]
    variants: list[dict[str, Any]] = [
        {"name": n, "weight": w, "model": {"uri": f"https://m/{n}.mar", "version": "1.0"}}
        for n, w in zip(names, weights, strict=True)
    ]
    variants[-1]["model"]["version"] = canary_version
    obj: dict[str, Any] = {
        "metadata": {"name": "m", "namespace": "ns"},
        "spec": {"variants": variants},
    }
    if rollout is not None:
        obj["spec"]["rollout"] = rollout
    if status_rollout is not None:
        obj["status"] = {"rollout": status_rollout}
    return obj


ROLLOUT = {
    "steps": [10, 50, 100],
    "stepSeconds": 60,
    "analysis": {"maxErrorRatio": 0.01, "maxLatencyP99Ms": 250},
}


def plan(**changes: Any) -> Plan:
    result = plan_of(isvc(ROLLOUT))
    assert result is not None
    return Plan(**{**result.__dict__, **changes})


def healthy(requests: float = 500) -> Observation:
    return Observation(Numbers(requests, 0, 40.0), Numbers(requests * 9, 1, 38.0))


def started(p: Plan, step: int = 0, at: float = T0) -> State:
    return State(p.target, PROGRESSING, step, at, "")


def test_no_rollout_means_the_spec_weights_apply() -> None:
    assert plan_of(isvc()) is None
    assert effective_weights(isvc(weights=(70, 30))) == {"stable": 70, "canary": 30}


def test_a_new_rollout_starts_at_the_first_step_and_says_so() -> None:
    p = plan()
    decision = decide(p, None, None, T0)
    assert decision.state == State(p.target, PROGRESSING, 0, T0, decision.state.message)
    assert decision.event is not None and decision.event.reason == "RolloutStarted"
    assert "10%" in decision.event.message


def test_until_the_loop_starts_it_the_canary_gets_nothing() -> None:
    assert effective_weights(isvc(ROLLOUT)) == {"stable": 100, "canary": 0}


def test_weights_in_force_follow_the_step_in_status() -> None:
    p = plan()
    state = started(p, step=1).to_status(p)
    assert state["weight"] == 50
    assert effective_weights(isvc(ROLLOUT, status_rollout=state)) == {"stable": 50, "canary": 50}


def test_the_rest_is_shared_by_spec_weight_in_whole_percents() -> None:
    p = plan_of(isvc(ROLLOUT, weights=(60, 30, 10)))
    assert p is not None
    state = started(p).to_status(p)
    weights = effective_weights(isvc(ROLLOUT, weights=(60, 30, 10), status_rollout=state))
    assert weights == {"a": 60, "b": 30, "canary": 10}
    p2 = plan_of(isvc(ROLLOUT, weights=(0, 0, 100)))
    assert p2 is not None
    state = started(p2).to_status(p2)
    weights = effective_weights(isvc(ROLLOUT, weights=(0, 0, 100), status_rollout=state))
    assert weights == {"a": 45, "b": 45, "canary": 10}
    assert sum(weights.values()) == 100


def test_nothing_changes_before_the_step_is_over() -> None:
    p = plan()
    state = started(p)
    assert decide(p, state, healthy(), T0 + 59).state is state


def test_a_passing_step_advances_when_its_time_is_up() -> None:
    p = plan()
    decision = decide(p, started(p), healthy(), T0 + 60)
    assert (decision.state.step, decision.state.step_started) == (1, T0 + 60)
    assert decision.event is not None and decision.event.reason == "RolloutStepAdvanced"
    assert "50%" in decision.event.message and "error ratio 0.0000" in decision.event.message


def test_after_the_last_step_the_rollout_succeeded() -> None:
    p = plan()
    decision = decide(p, started(p, step=2), healthy(), T0 + 60)
    assert decision.state.phase == SUCCEEDED
    assert decision.event is not None and decision.event.reason == "RolloutSucceeded"
    status = decision.state.to_status(p)
    assert status["weight"] == 100
    assert effective_weights(isvc(ROLLOUT, status_rollout=status)) == {"stable": 0, "canary": 100}
    assert decide(p, decision.state, None, T0 + 999).state is decision.state


def test_a_failing_canary_is_rolled_back_at_once_with_the_numbers() -> None:
    p = plan()
    failing = Observation(Numbers(200, 30, 40.0), Numbers(1800, 2, 38.0))
    decision = decide(p, started(p, step=1), failing, T0 + 5)
    assert decision.state.phase == ABORTED
    assert decision.event is not None and decision.event.type == "Warning"
    assert "error ratio 0.1500 > 0.01 (30 of 200 requests; stable 0.0011)" in decision.state.message
    status = decision.state.to_status(p)
    assert status["weight"] == 0
    assert effective_weights(isvc(ROLLOUT, status_rollout=status)) == {"stable": 100, "canary": 0}
    assert decide(p, decision.state, healthy(), T0 + 999).state is decision.state


def test_a_slow_canary_is_rolled_back() -> None:
    p = plan()
    slow = Observation(Numbers(500, 0, 900.0), Numbers(4500, 0, 40.0))
    decision = decide(p, started(p), slow, T0 + 10)
    assert decision.state.phase == ABORTED
    assert "p99 latency 900.0 ms > 250 ms (stable 40.0 ms)" in decision.state.message


def test_a_few_early_errors_wait_for_enough_requests_or_the_end_of_the_step() -> None:
    p = plan()
    few = Observation(Numbers(5, 1, 40.0), Numbers(45, 0, 40.0))
    assert decide(p, started(p), few, T0 + 10).state.phase == PROGRESSING
    assert decide(p, started(p), few, T0 + 60).state.phase == ABORTED


def test_a_canary_no_worse_than_stable_holds_instead_of_failing() -> None:
    p = plan()
    shared_outage = Observation(Numbers(500, 50, 40.0), Numbers(4500, 900, 40.0))
    decision = decide(p, started(p), shared_outage, T0 + 60)
    assert (decision.state.phase, decision.state.step) == (PROGRESSING, 0)
    assert decision.state.message.startswith("holding step 1: error ratio 0.1000")
    assert decision.event is None
    assert decide(p, decision.state, shared_outage, T0 + 61).state is decision.state


def test_no_canary_traffic_holds_the_step() -> None:
    p = plan()
    decision = decide(p, started(p), None, T0 + 60)
    assert decision.state.step == 0 and "no requests reached canary" in decision.state.message


def test_without_analysis_limits_only_time_counts() -> None:
    p = plan(analysis=Analysis())
    awful = Observation(Numbers(100, 100, 9_000.0), Numbers(100, 0, 1.0))
    assert decide(p, started(p), awful, T0 + 60).state.step == 1


def test_a_new_canary_version_restarts_the_rollout_even_after_an_abort() -> None:
    p = plan()
    aborted = State(p.target, ABORTED, 1, T0, "bad")
    new_plan = plan_of(isvc(ROLLOUT, canary_version="3.0"))
    assert new_plan is not None and new_plan.target != p.target
    decision = decide(new_plan, aborted, None, T0 + 5)
    assert (decision.state.phase, decision.state.step, decision.state.target) == (
        PROGRESSING,
        0,
        new_plan.target,
    )
    stale = isvc(ROLLOUT, canary_version="3.0", status_rollout=aborted.to_status(p))
    assert effective_weights(stale)["canary"] == 0


def test_state_round_trips_through_status() -> None:
    p = plan()
    state = State(p.target, PROGRESSING, 2, T0, "canary at 100%")
    assert state_of(isvc(ROLLOUT, status_rollout=state.to_status(p))) == state


@pytest.mark.parametrize(
    ("phase", "progressing", "aborted"),
    [(PROGRESSING, "True", "False"), (SUCCEEDED, "False", "False"), (ABORTED, "False", "True")],
)
def test_conditions_follow_the_phase(phase: str, progressing: str, aborted: str) -> None:
    state = State("t", phase, 0, T0, "msg")
    result = conditions(state, [], T0, generation=3)
    assert [(c["type"], c["status"]) for c in result] == [
        ("RolloutProgressing", progressing),
        ("RolloutAborted", aborted),
    ]
    assert all(c["observedGeneration"] == 3 and c["message"] == "msg" for c in result)


def test_condition_transition_times_move_only_on_change() -> None:
    state = State("t", PROGRESSING, 0, T0, "msg")
    first = conditions(state, [], T0, generation=1)
    again = conditions(state, first, T0 + 100, generation=1)
    assert again == first
    done = conditions(State("t", SUCCEEDED, 2, T0, "done"), first, T0 + 200, generation=1)
    assert done[0]["lastTransitionTime"] != first[0]["lastTransitionTime"]
    assert done[1]["lastTransitionTime"] == first[1]["lastTransitionTime"]
