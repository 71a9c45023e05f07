"""The rollout decision: a pure function of the plan, the state, the numbers and the clock."""

from __future__ import annotations

from typing import Any

import pytest
from marfleet.operator.rollout import (
    ABORTED,
    INCONCLUSIVE,
    METRICS_UNAVAILABLE,
    NO_WORSE_THAN_STABLE,
    NOT_ENOUGH_TRAFFIC,
    PROGRESSING,
    SUCCEEDED,
    WAITING_FOR_CANARY,
    Analysis,
    CanaryPods,
    Numbers,
    Observation,
    Plan,
    State,
    Unavailable,
    conditions,
    decide,
    effective_weights,
    exceeds,
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


READY = CanaryPods(True)
BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, float("inf"))


def numbers(
    requests: float, errors: float = 0, slower_than: dict[float, float] | None = None
) -> Numbers:
    """`requests` answers, `errors` of them 5xx; all within 25 ms except `slower_than`
    (bucket bound in s -> how many answers were above it)."""
    above = slower_than or {}
    buckets = {b: requests - sum(n for bound, n in above.items() if bound >= b) for b in BUCKETS}
    buckets[float("inf")] = requests
    return Numbers(requests, errors, buckets)


def healthy(requests: float = 500) -> Observation:
    return Observation(numbers(requests), numbers(requests * 9, 1))


def started(p: Plan, step: int = 0, at: float = T0) -> State:
    return State(p.target, PROGRESSING, step, at, "")


def at(p: Plan, state: State | None, seen: Observation | Unavailable | None, now: float) -> State:
    return decide(p, state, READY, seen, now).state


def test_no_rollout_means_the_spec_weights_apply() -> None:
    assert plan_of(isvc()) is None
    assert effective_weights(isvc(weights=(70, 30))) == {"stable": 70, "canary": 30}


def test_the_spec_weights_apply_again_once_spec_rollout_is_removed() -> None:
    p = plan()
    done = State(p.target, SUCCEEDED, 2, T0, "done").to_status(p)
    assert effective_weights(isvc(ROLLOUT, status_rollout=done)) == {"stable": 0, "canary": 100}
    assert effective_weights(isvc(None, status_rollout=done)) == {"stable": 100, "canary": 0}


def test_a_new_rollout_waits_for_the_canary_pods_before_its_clock_starts() -> None:
    p = plan()
    decision = decide(p, None, CanaryPods(False, "0/1"), None, T0)
    assert decision.state == State(p.target, PROGRESSING, 0, None, decision.state.message)
    assert decision.event is not None and decision.event.reason == "RolloutStarted"
    status = decision.state.to_status(p)
    assert "stepStartedAt" not in status and status["weight"] == 0
    assert effective_weights(isvc(ROLLOUT, status_rollout=status)) == {"stable": 100, "canary": 0}
    waiting = decide(p, decision.state, CanaryPods(False, "0/1 replicas"), None, T0 + 30)
    assert waiting.state.step_started is None and waiting.state.holding == WAITING_FOR_CANARY
    assert "0/1 replicas" in waiting.state.message and waiting.event is None
    ready = decide(p, waiting.state, READY, None, T0 + 40)
    assert (ready.state.step_started, ready.state.holding) == (T0 + 40, "")
    assert ready.event is not None and ready.event.reason == "RolloutStepStarted"
    assert "10%" in ready.event.message
    assert ready.state.to_status(p)["weight"] == 10


def test_a_new_version_restarts_the_wait_even_mid_step() -> None:
    p = plan()
    new_plan = plan_of(isvc(ROLLOUT, canary_version="3.0"))
    assert new_plan is not None and new_plan.version == "3.0"
    decision = decide(new_plan, started(p, step=1), READY, None, T0 + 5)
    assert (decision.state.step, decision.state.step_started) == (0, None)


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
    assert at(p, state, healthy(), T0 + 59) is state


def test_a_passing_step_advances_when_its_time_is_up() -> None:
    p = plan()
    decision = decide(p, started(p), READY, healthy(), T0 + 60)
    assert (decision.state.step, decision.state.step_started) == (1, T0 + 60)
    assert decision.event is not None and decision.event.reason == "RolloutStepAdvanced"
    assert "50%" in decision.event.message and "error ratio 0.0000" in decision.event.message
    assert "p99 0-25 ms" in decision.event.message  # the bucket, never an interpolated value


def test_after_the_last_step_the_rollout_succeeded() -> None:
    p = plan()
    decision = decide(p, started(p, step=2), READY, healthy(), T0 + 60)
    assert decision.state.phase == SUCCEEDED
    assert decision.event is not None and decision.event.reason == "RolloutSucceeded"
    status = decision.state.to_status(p)
    assert status["weight"] == 100
    assert effective_weights(isvc(ROLLOUT, status_rollout=status)) == {"stable": 0, "canary": 100}
    assert at(p, decision.state, None, T0 + 999) is decision.state


def test_a_failing_canary_is_rolled_back_at_once_with_the_numbers() -> None:
    p = plan()
    failing = Observation(numbers(200, 30), numbers(1800, 2))
    decision = decide(p, started(p, step=1), READY, failing, T0 + 5)
    assert decision.state.phase == ABORTED
    assert decision.event is not None and decision.event.type == "Warning"
    assert "error ratio 0.1500 > 0.01 (30 of 200 requests; stable 0.0011)" in decision.state.message
    status = decision.state.to_status(p)
    assert status["weight"] == 0
    assert effective_weights(isvc(ROLLOUT, status_rollout=status)) == {"stable": 100, "canary": 0}
    assert at(p, decision.state, healthy(), T0 + 999) is decision.state


def test_a_slow_canary_is_rolled_back_on_the_share_of_slow_requests() -> None:
    p = plan()
    slow = Observation(numbers(500, slower_than={0.5: 400}), numbers(4500))
    state = at(p, started(p), slow, T0 + 10)
    assert state.phase == ABORTED
    assert (
        "p99 latency over 250 ms: 400 of 500 requests (80.0%) slower, at most 1% allowed "
        "(stable 0.0%)" in state.message
    )


def test_nothing_is_decided_on_fewer_than_min_requests_either_way() -> None:
    p = plan()
    all_failing = Observation(numbers(99, 99), numbers(900))
    assert at(p, started(p), all_failing, T0 + 10).phase == PROGRESSING
    held = decide(p, started(p), READY, all_failing, T0 + 60)
    assert (held.state.phase, held.state.step, held.state.holding) == (
        PROGRESSING,
        0,
        NOT_ENOUGH_TRAFFIC,
    )
    assert held.event is not None and held.event.reason == "RolloutHolding"
    assert "fewer than 100 canary answers in this step" in held.state.message
    assert "since 2030-03-17T17:47:40Z" in held.state.message
    # ...and decides as soon as enough arrive, both ways.
    assert at(p, held.state, Observation(numbers(100, 100), numbers(900)), T0 + 70).phase == ABORTED
    promoted = at(p, held.state, healthy(100), T0 + 70)
    assert (promoted.step, promoted.holding) == (1, "")


def test_a_hold_for_answers_names_the_versions_that_answered_instead() -> None:
    p = plan()
    elsewhere = Observation(numbers(0), numbers(900), {"1.0": 250})
    held = at(p, started(p), elsewhere, T0 + 60)
    assert held.holding == NOT_ENOUGH_TRAFFIC
    assert "answers of other versions (1.0: 250)" in held.message
    assert "the archive's version is not '2.0'" in held.message


def test_min_requests_is_configurable() -> None:
    p = plan_of(isvc({**ROLLOUT, "analysis": {"maxErrorRatio": 0.1, "minRequests": 20}}))
    assert p is not None and p.analysis.min_requests == 20
    assert at(p, started(p), Observation(numbers(20, 20), numbers(90)), T0 + 1).phase == ABORTED


def test_a_few_cold_requests_do_not_abort_a_healthy_canary() -> None:
    # 2 of 150 slower than the limit is over 1 %, but far from conclusive.
    p = plan()
    cold = Observation(numbers(150, slower_than={1.0: 2}), numbers(1350))
    decision = decide(p, started(p), READY, cold, T0 + 10)
    assert decision.state.phase == PROGRESSING
    held = decide(p, decision.state, READY, cold, T0 + 60)
    assert (held.state.phase, held.state.holding) == (PROGRESSING, INCONCLUSIVE)
    assert "not yet conclusive" in held.state.message
    # With more of its own answers the step is judged again: fine now, so it advances.
    assert (
        at(
            p, held.state, Observation(numbers(400, slower_than={1.0: 2}), numbers(3600)), T0 + 90
        ).step
        == 1
    )


def test_the_binomial_test_behind_an_abort() -> None:
    assert not exceeds(2, 150, 0.01)  # P(X >= 2 | 150, 1 %) is about 0.44
    assert not exceeds(4, 100, 0.01)  # about 0.018
    assert exceeds(5, 100, 0.01)  # about 0.0034
    assert exceeds(30, 100, 0.05)
    assert exceeds(1, 100, 0.0) and not exceeds(100, 100, 1.0)
    assert exceeds(600, 50_000, 0.01)  # large counts stay fast and right: 1.2 % of 50,000
    assert not exceeds(520, 50_000, 0.01)


def test_a_canary_no_worse_than_stable_holds_instead_of_failing() -> None:
    p = plan()
    shared_outage = Observation(numbers(500, 50), numbers(4500, 900))
    decision = decide(p, started(p), READY, shared_outage, T0 + 60)
    assert (decision.state.phase, decision.state.step) == (PROGRESSING, 0)
    assert decision.state.holding == NO_WORSE_THAN_STABLE
    assert "error ratio 0.1000" in decision.state.message
    assert decision.event is not None and decision.event.reason == "RolloutHolding"
    again = decide(p, decision.state, READY, shared_outage, T0 + 61)
    assert again.state is decision.state and again.event is None


def test_no_canary_traffic_holds_the_step() -> None:
    p = plan()
    state = at(p, started(p), None, T0 + 60)
    assert state.step == 0 and state.holding == NOT_ENOUGH_TRAFFIC


def test_unreadable_metrics_hold_loudly_and_can_abort_after_a_timeout() -> None:
    p = plan()
    first = decide(p, started(p), READY, Unavailable("resolving router metrics host"), T0 + 5)
    assert first.state.holding == METRICS_UNAVAILABLE and first.state.holding_since == T0 + 5
    assert first.event is not None and (first.event.type, first.event.reason) == (
        "Warning",
        METRICS_UNAVAILABLE,
    )
    assert "resolving router metrics host" in first.event.message
    later = decide(p, first.state, READY, Unavailable("still down"), T0 + 500)
    assert later.state is first.state and later.event is None  # no abort without the policy
    recovered = decide(p, first.state, READY, healthy(), T0 + 501)
    assert recovered.state.holding == "" and recovered.state.step == 1
    strict = plan_of(isvc({**ROLLOUT, "abortAfterMetricsUnavailableSeconds": 120}))
    assert strict is not None
    waiting = decide(strict, started(strict), READY, Unavailable("down"), T0 + 5).state
    assert at(strict, waiting, Unavailable("down"), T0 + 124).phase == PROGRESSING
    aborted = decide(strict, waiting, READY, Unavailable("down"), T0 + 125)
    assert aborted.state.phase == ABORTED and "no metrics for 120 s" in aborted.state.message


def test_without_analysis_limits_only_time_and_traffic_count() -> None:
    p = plan(analysis=Analysis())
    awful = Observation(numbers(100, 100, {1.0: 100}), numbers(100))
    assert at(p, started(p), awful, T0 + 60).step == 1


def test_a_new_canary_version_restarts_the_rollout_even_after_an_abort() -> None:
    p = plan()
    aborted = State(p.target, ABORTED, 1, T0, "bad")
    new_plan = plan_of(isvc(ROLLOUT, canary_version="3.0"))
    assert new_plan is not None and new_plan.target != p.target
    decision = decide(new_plan, aborted, READY, None, T0 + 5)
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
    held = State(p.target, PROGRESSING, 0, None, "waiting", WAITING_FOR_CANARY, T0)
    assert state_of(isvc(ROLLOUT, status_rollout=held.to_status(p))) == held


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
        ("RolloutHolding", "False"),
    ]
    assert all(c["observedGeneration"] == 3 and c["message"] == "msg" for c in result)


def test_a_hold_is_a_condition_with_its_reason() -> None:
    state = State("t", PROGRESSING, 0, T0, "holding step 1 ...", METRICS_UNAVAILABLE, T0)
    result = {c["type"]: c for c in conditions(state, [], T0, generation=1)}
    assert (result["RolloutHolding"]["status"], result["RolloutHolding"]["reason"]) == (
        "True",
        METRICS_UNAVAILABLE,
    )
    waiting = State("t", PROGRESSING, 0, None, "w", WAITING_FOR_CANARY, T0)
    result = {c["type"]: c for c in conditions(waiting, [], T0, generation=1)}
    assert result["RolloutProgressing"]["reason"] == WAITING_FOR_CANARY


def test_condition_transition_times_move_only_on_change() -> None:
    state = State("t", PROGRESSING, 0, T0, "msg")
    first = conditions(state, [], T0, generation=1)
    again = conditions(state, first, T0 + 100, generation=1)
    assert again == first
    done = conditions(State("t", SUCCEEDED, 2, T0, "done"), first, T0 + 200, generation=1)
    assert done[0]["lastTransitionTime"] != first[0]["lastTransitionTime"]
    assert done[1]["lastTransitionTime"] == first[1]["lastTransitionTime"]
