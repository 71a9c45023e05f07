"""Progressive rollout of an InferenceService's last variant (the canary). Pure: no I/O, no clock.

`spec.rollout` asks for the canary's weight to go through `steps`, one step per `stepSeconds`,
while its numbers stay within `analysis`. Where the rollout stands lives in `status.rollout`
(so an operator restarted mid-rollout carries on from the same step), and the weights in force,
which the routers follow, are derived from it and published in `status.variants[].weight`;
`spec` is never rewritten (GitOps tools would see the operator fight them).

`decide` takes the rollout's plan, its state, what was observed of the canary and the stable
variants since the step began, and the time, and says what the state becomes:

- a new canary (its model URI or version changed, or no state yet): start at the first step;
- during a step, the canary is over a limit *and* worse than the stable variants (given enough
  requests to judge): abort — canary weight 0, `RolloutAborted` with the numbers that failed;
- when the step's time is up: over a limit but no worse than stable (a shared cause, not the
  canary's fault), or no canary traffic to judge: hold the step; otherwise take the next step,
  or, after the last one, mark the rollout `Succeeded`.
"""

from __future__ import annotations

import calendar
import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

PROGRESSING = "Progressing"
SUCCEEDED = "Succeeded"
ABORTED = "Aborted"
ROLLOUT_PROGRESSING = "RolloutProgressing"
ROLLOUT_ABORTED = "RolloutAborted"
CONDITIONS = (ROLLOUT_PROGRESSING, ROLLOUT_ABORTED)

MIN_REQUESTS_TO_ABORT = 20
"""Requests the canary must have answered in a step before a bad ratio can abort it early."""


@dataclass(frozen=True)
class Analysis:
    max_error_ratio: float | None = None
    max_latency_p99_ms: float | None = None


@dataclass(frozen=True)
class Plan:
    """What `spec.rollout` asks for, with the variants it moves traffic between."""

    canary: str
    others: Mapping[str, int]  # the other variants and their spec weights, in spec order
    target: str  # identifies the canary's model: a new one starts a new rollout
    steps: tuple[int, ...]
    step_seconds: float
    analysis: Analysis


@dataclass(frozen=True)
class State:
    """`status.rollout`."""

    target: str
    phase: str
    step: int
    step_started: float  # seconds since the epoch
    message: str

    def to_status(self, plan: Plan) -> dict[str, Any]:
        return {
            "target": self.target,
            "phase": self.phase,
            "step": self.step,
            "weight": canary_weight(plan, self),
            "stepStartedAt": _rfc3339(self.step_started),
            "message": self.message,
        }


@dataclass(frozen=True)
class Numbers:
    """One side's traffic over the analysis window, as the routers saw it."""

    requests: float
    errors: float  # 5xx answers, including the router's own 502/503/504
    p99_ms: float | None  # None without requests

    @property
    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class Observation:
    canary: Numbers
    stable: Numbers


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    state: State
    event: Event | None = None


def plan_of(obj: Mapping[str, Any]) -> Plan | None:
    """The rollout an InferenceService asks for; None without `spec.rollout` or a second variant."""
    spec = obj.get("spec") or {}
    rollout = spec.get("rollout")
    variants = spec.get("variants") or []
    if not rollout or len(variants) < 2:
        return None
    canary = variants[-1]
    model = canary.get("model") or {}
    identity = f"{canary['name']}|{model.get('uri', '')}|{model.get('version', '')}"
    analysis = rollout.get("analysis") or {}
    return Plan(
        canary=canary["name"],
        others={v["name"]: int(v.get("weight", 0)) for v in variants[:-1]},
        target=hashlib.sha256(identity.encode()).hexdigest()[:16],
        steps=tuple(int(s) for s in rollout.get("steps") or (100,)),
        step_seconds=float(rollout.get("stepSeconds", 300)),
        analysis=Analysis(
            max_error_ratio=_optional_float(analysis.get("maxErrorRatio")),
            max_latency_p99_ms=_optional_float(analysis.get("maxLatencyP99Ms")),
        ),
    )


def state_of(obj: Mapping[str, Any]) -> State | None:
    raw = (obj.get("status") or {}).get("rollout")
    if not raw or "target" not in raw:
        return None
    return State(
        target=str(raw["target"]),
        phase=str(raw.get("phase", PROGRESSING)),
        step=int(raw.get("step", 0)),
        step_started=_epoch(str(raw.get("stepStartedAt", ""))),
        message=str(raw.get("message", "")),
    )


def canary_weight(plan: Plan, state: State | None) -> int:
    """The canary's weight in force: 0 until its rollout has started and after an abort."""
    if state is None or state.target != plan.target or state.phase == ABORTED:
        return 0
    if state.phase == SUCCEEDED:
        return 100
    return plan.steps[min(state.step, len(plan.steps) - 1)]


def effective_weights(obj: Mapping[str, Any]) -> dict[str, int]:
    """Every variant's weight in force (what status.variants[].weight publishes)."""
    variants = (obj.get("spec") or {}).get("variants") or []
    plan = plan_of(obj)
    if plan is None:
        default = 100 if len(variants) == 1 else 0
        return {v["name"]: int(v.get("weight", default)) for v in variants}
    canary = canary_weight(plan, state_of(obj))
    return {**_share(100 - canary, plan.others), plan.canary: canary}


def decide(
    plan: Plan, state: State | None, observation: Observation | None, now: float
) -> Decision:
    """What the rollout's state becomes at `now`, given what was observed in this step."""
    if state is None or state.target != plan.target:
        first = plan.steps[0]
        message = f"canary {plan.canary} at {first}% (step 1 of {len(plan.steps)})"
        return Decision(
            State(plan.target, PROGRESSING, 0, now, message),
            Event("Normal", "RolloutStarted", message),
        )
    if state.phase != PROGRESSING:
        return Decision(state)
    failed, held = judge(plan.analysis, observation) if observation else ([], [])
    if failed and observation is not None and observation.canary.requests >= 1:
        step_over = now - state.step_started >= plan.step_seconds
        if observation.canary.requests >= MIN_REQUESTS_TO_ABORT or step_over:
            message = (
                f"canary {plan.canary} rolled back to 0% at step {state.step + 1} of "
                f"{len(plan.steps)}: " + "; ".join(failed)
            )
            return Decision(
                replace(state, phase=ABORTED, message=message),
                Event("Warning", "RolloutAborted", message),
            )
    if now - state.step_started < plan.step_seconds:
        return Decision(state)
    if observation is None or observation.canary.requests == 0:
        return hold(state, f"no requests reached canary {plan.canary} in this step")
    if held:
        return hold(state, "; ".join(held))
    if state.step + 1 >= len(plan.steps):
        message = f"canary {plan.canary} serves 100% after {len(plan.steps)} steps"
        return Decision(
            replace(state, phase=SUCCEEDED, message=message),
            Event("Normal", "RolloutSucceeded", message),
        )
    step = state.step + 1
    message = f"canary {plan.canary} at {plan.steps[step]}% (step {step + 1} of {len(plan.steps)})"
    return Decision(
        State(plan.target, PROGRESSING, step, now, message),
        Event("Normal", "RolloutStepAdvanced", message + "; " + summary(observation)),
    )


def judge(analysis: Analysis, observation: Observation) -> tuple[list[str], list[str]]:
    """(limits the canary crossed by its own fault, limits crossed as badly by stable too)."""
    canary, stable = observation.canary, observation.stable
    failed: list[str] = []
    held: list[str] = []
    limit = analysis.max_error_ratio
    if limit is not None and canary.requests and canary.error_ratio > limit:
        text = (
            f"error ratio {canary.error_ratio:.4f} > {limit} "
            f"({canary.errors:.0f} of {canary.requests:.0f} requests; "
            f"stable {_ratio(stable)})"
        )
        worse = not stable.requests or canary.error_ratio > stable.error_ratio
        (failed if worse else held).append(text)
    p99_limit = analysis.max_latency_p99_ms
    if p99_limit is not None and canary.p99_ms is not None and canary.p99_ms > p99_limit:
        text = (
            f"p99 latency {canary.p99_ms:.1f} ms > {p99_limit:g} ms (stable {_ms(stable.p99_ms)})"
        )
        worse = stable.p99_ms is None or canary.p99_ms > stable.p99_ms
        (failed if worse else held).append(text)
    return failed, held


def summary(observation: Observation) -> str:
    canary, stable = observation.canary, observation.stable
    return (
        f"canary {canary.requests:.0f} requests, error ratio {canary.error_ratio:.4f}, "
        f"p99 {_ms(canary.p99_ms)}; stable {stable.requests:.0f} requests, "
        f"error ratio {_ratio(stable)}, p99 {_ms(stable.p99_ms)}"
    )


def conditions(
    state: State, previous: Sequence[Mapping[str, Any]], now: float, generation: int
) -> list[dict[str, Any]]:
    """RolloutProgressing and RolloutAborted for `state`; a transition time moves only when
    the condition's status changes."""
    reason = {PROGRESSING: "StepInProgress", SUCCEEDED: SUCCEEDED, ABORTED: "AnalysisFailed"}
    wanted = [
        (ROLLOUT_PROGRESSING, state.phase == PROGRESSING, reason[state.phase]),
        (
            ROLLOUT_ABORTED,
            state.phase == ABORTED,
            "AnalysisFailed" if state.phase == ABORTED else "WithinLimits",
        ),
    ]
    before = {c.get("type"): c for c in previous}
    result = []
    for kind, on, why in wanted:
        status = "True" if on else "False"
        old = before.get(kind) or {}
        changed = old.get("status") != status
        result.append(
            {
                "type": kind,
                "status": status,
                "reason": why,
                "message": state.message,
                "lastTransitionTime": _rfc3339(now)
                if changed
                else old.get("lastTransitionTime", _rfc3339(now)),
                "observedGeneration": generation,
            }
        )
    return result


def hold(state: State, why: str) -> Decision:
    """Stay on the current step, saying why (written once, not on every tick)."""
    message = f"holding step {state.step + 1}: {why}"
    return Decision(state if state.message == message else replace(state, message=message))


def _share(total: int, weights: Mapping[str, int]) -> dict[str, int]:
    """Split `total` between variants in proportion to `weights` (evenly if all are 0), in
    whole percents that add up to `total` (largest remainders get the leftover points)."""
    names = list(weights)
    basis = [weights[n] for n in names] if sum(weights.values()) else [1] * len(names)
    exact = [total * b / sum(basis) for b in basis]
    shares = [int(x) for x in exact]
    by_remainder = sorted(range(len(names)), key=lambda i: exact[i] - shares[i], reverse=True)
    for index in by_remainder[: total - sum(shares)]:
        shares[index] += 1
    return dict(zip(names, shares, strict=True))


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _ratio(numbers: Numbers) -> str:
    return f"{numbers.error_ratio:.4f}" if numbers.requests else "no requests"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def _rfc3339(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _epoch(text: str) -> float:
    try:
        return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return 0.0
