"""Progressive rollout of an InferenceService's last variant (the canary). Pure: no I/O, no clock.

`spec.rollout` asks for the canary's weight to go through `steps`, one step per `stepSeconds`,
while its numbers stay within `analysis`. Where the rollout stands lives in `status.rollout`
(so an operator restarted mid-rollout carries on from the same step), and the weights in force,
which the routers follow, are derived from it and published in `status.variants[].weight`;
`spec` is never rewritten (GitOps tools would see the operator fight them).

`decide` takes the rollout's plan, its state, whether the canary's current revision is rolled
out, what was observed of the canary and the stable variants since the step began (or why that
could not be read), and the time, and says what the state becomes:

- a new canary (its model URI or version changed, or no state yet): step 1, its clock not yet
  running and the canary at 0 % until every canary pod runs the new revision and is Ready;
  then the clock starts, so the old revision's answers are never this one's evidence;
- decisions need evidence both ways: nothing is promoted or aborted on fewer than
  `minRequests` canary answers in the step;
- abort (canary weight 0, `RolloutAborted` with the numbers) when a limit is crossed
  *conclusively* (a one-sided binomial test at 99 % says the canary's true share of errors,
  or of requests slower than the latency limit, is above the limit) and the canary is worse
  than the stable variants;
- when the step's time is up: within the limits, take the next step (or, after the last,
  `Succeeded`); over a limit but not conclusively, or no worse than stable (a shared cause),
  or too few answers: hold the step, saying why and since when;
- metrics that cannot be read hold the step (loudly: the loop records a Warning); with
  `abortAfterMetricsUnavailableSeconds` the rollout aborts once that has lasted so long.

Latency is judged as the share of requests slower than `maxLatencyP99Ms` (the p99 is under the
limit exactly when at most 1 % are slower), counted from the routers' histogram buckets without
interpolation: only requests above the first bucket bound at or over the limit count as slow,
so the limit is effectively rounded up to that bound (docs/canary.md lists the bounds).
"""

from __future__ import annotations

import calendar
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from . import labels

PROGRESSING = "Progressing"
SUCCEEDED = "Succeeded"
ABORTED = "Aborted"
ROLLOUT_PROGRESSING = "RolloutProgressing"
ROLLOUT_ABORTED = "RolloutAborted"
ROLLOUT_HOLDING = "RolloutHolding"
CONDITIONS = (ROLLOUT_PROGRESSING, ROLLOUT_ABORTED, ROLLOUT_HOLDING)

# Why a step holds (the RolloutHolding condition's reason).
WAITING_FOR_CANARY = "WaitingForCanary"
NOT_ENOUGH_TRAFFIC = "NotEnoughTraffic"
METRICS_UNAVAILABLE = "MetricsUnavailable"
INCONCLUSIVE = "Inconclusive"
NO_WORSE_THAN_STABLE = "NoWorseThanStable"

DEFAULT_MIN_REQUESTS = 100
"""Canary answers a step needs before it can be promoted or aborted."""
SIGNIFICANCE = 0.01
"""An abort needs P(at least this many bad answers | the true share is at the limit) < 1 %."""
LATENCY_QUANTILE = 0.99


@dataclass(frozen=True)
class Analysis:
    max_error_ratio: float | None = None
    max_latency_p99_ms: float | None = None
    min_requests: int = DEFAULT_MIN_REQUESTS
    abort_after_metrics_unavailable: float | None = None


@dataclass(frozen=True)
class Plan:
    """What `spec.rollout` asks for, with the variants it moves traffic between."""

    canary: str
    others: Mapping[str, int]  # the other variants and their spec weights, in spec order
    target: str  # identifies the canary's model (its revision): a new one starts a new rollout
    version: str  # the canary's model version ("" when the spec names none)
    steps: tuple[int, ...]
    step_seconds: float
    analysis: Analysis


@dataclass(frozen=True)
class State:
    """`status.rollout`."""

    target: str
    phase: str
    step: int
    step_started: float | None  # seconds since the epoch; None: waiting for the canary
    message: str
    holding: str = ""  # why the step holds (a reason above), "" when it does not
    holding_since: float | None = None

    def to_status(self, plan: Plan) -> dict[str, Any]:
        status: dict[str, Any] = {
            "target": self.target,
            "phase": self.phase,
            "step": self.step,
            "weight": canary_weight(plan, self),
            "message": self.message,
        }
        if self.step_started is not None:
            status["stepStartedAt"] = _rfc3339(self.step_started)
        if self.holding and self.holding_since is not None:
            status["holding"] = {"reason": self.holding, "since": _rfc3339(self.holding_since)}
        return status


@dataclass(frozen=True)
class Numbers:
    """One side's traffic over the analysis window, as the routers saw it."""

    requests: float
    errors: float  # 5xx answers, including the router's own 502/503/504
    buckets: Mapping[float, float] = field(default_factory=dict)  # cumulative, le → count

    @property
    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def slower_than(self, limit_ms: float) -> float:
        """Requests certainly slower than `limit_ms`: those above the first bucket bound at or
        over it (no interpolation; requests within that bucket may have been faster)."""
        bounds = sorted(b for b in self.buckets if b * 1000 >= limit_ms)
        if not bounds:
            return 0.0
        return max(0.0, self.requests - self.buckets[bounds[0]])

    def quantile_bucket(self, q: float) -> tuple[float, float] | None:
        """The bucket (lower, upper bound in ms) that holds the q-quantile; None without data."""
        ordered = sorted(self.buckets.items())
        if not ordered or ordered[-1][1] <= 0:
            return None
        rank = q * ordered[-1][1]
        lower = 0.0
        for bound, count in ordered:
            if count >= rank:
                return lower * 1000, bound * 1000
            lower = bound
        return lower * 1000, math.inf


@dataclass(frozen=True)
class Observation:
    canary: Numbers
    stable: Numbers
    elsewhere: Mapping[str, float] = field(default_factory=dict)
    """Canary answers that named another version than the one under analysis (version →
    count): not evidence, but worth saying when the step waits for answers."""


@dataclass(frozen=True)
class Unavailable:
    """The numbers could not be read, and why."""

    reason: str


@dataclass(frozen=True)
class CanaryPods:
    """Whether the canary's current revision is fully rolled out and Ready, and if not, where
    it stands (for the holding message)."""

    ready: bool
    detail: str = ""


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    state: State
    event: Event | None = None


def revision(variant: Mapping[str, Any]) -> str:
    """Identifies a variant's model (name, URI, version): what a rollout is for."""
    model = variant.get("model") or {}
    return labels.model_revision(
        str(variant["name"]), str(model.get("uri", "")), str(model.get("version", ""))
    )


def plan_of(obj: Mapping[str, Any]) -> Plan | None:
    """The rollout an InferenceService asks for; None without `spec.rollout` or a second variant."""
    spec = obj.get("spec") or {}
    rollout = spec.get("rollout")
    variants = spec.get("variants") or []
    if not rollout or len(variants) < 2:
        return None
    canary = variants[-1]
    analysis = rollout.get("analysis") or {}
    return Plan(
        canary=canary["name"],
        others={v["name"]: int(v.get("weight", 0)) for v in variants[:-1]},
        target=revision(canary),
        version=str((canary.get("model") or {}).get("version") or ""),
        steps=tuple(int(s) for s in rollout.get("steps") or (100,)),
        step_seconds=float(rollout.get("stepSeconds", 300)),
        analysis=Analysis(
            max_error_ratio=_optional_float(analysis.get("maxErrorRatio")),
            max_latency_p99_ms=_optional_float(analysis.get("maxLatencyP99Ms")),
            min_requests=int(analysis.get("minRequests", DEFAULT_MIN_REQUESTS)),
            abort_after_metrics_unavailable=_optional_float(
                rollout.get("abortAfterMetricsUnavailableSeconds")
            ),
        ),
    )


def state_of(obj: Mapping[str, Any]) -> State | None:
    raw = (obj.get("status") or {}).get("rollout")
    if not raw or "target" not in raw:
        return None
    holding = raw.get("holding") or {}
    started = raw.get("stepStartedAt")
    return State(
        target=str(raw["target"]),
        phase=str(raw.get("phase", PROGRESSING)),
        step=int(raw.get("step", 0)),
        step_started=None if not started else _epoch(str(started)),
        message=str(raw.get("message", "")),
        holding=str(holding.get("reason", "")),
        holding_since=_epoch(str(holding["since"])) if holding.get("since") else None,
    )


def canary_weight(plan: Plan, state: State | None) -> int:
    """The canary's weight in force: 0 until its rollout's first step has started (its pods
    run the new revision) and after an abort."""
    if state is None or state.target != plan.target or state.phase == ABORTED:
        return 0
    if state.phase == SUCCEEDED:
        return 100
    if state.step_started is None:
        return 0
    return plan.steps[min(state.step, len(plan.steps) - 1)]


def effective_weights(obj: Mapping[str, Any]) -> dict[str, int]:
    """Every variant's weight in force (what status.variants[].weight publishes). Without
    `spec.rollout` the spec's weights are in force, whatever an earlier rollout had reached."""
    variants = (obj.get("spec") or {}).get("variants") or []
    plan = plan_of(obj)
    if plan is None:
        default = 100 if len(variants) == 1 else 0
        return {v["name"]: int(v.get("weight", default)) for v in variants}
    canary = canary_weight(plan, state_of(obj))
    return {**_share(100 - canary, plan.others), plan.canary: canary}


def decide(
    plan: Plan,
    state: State | None,
    pods: CanaryPods,
    observation: Observation | Unavailable | None,
    now: float,
) -> Decision:
    """What the rollout's state becomes at `now`. `observation` is what was seen in the
    current step (None when nothing was read: no step running); before a step starts it is
    Unavailable when the step's numbers could not be read, and the step does not start."""
    if state is None or state.target != plan.target:
        message = f"canary {plan.canary}: new revision, waiting for its pods before step 1"
        return Decision(
            State(plan.target, PROGRESSING, 0, None, message),
            Event("Normal", "RolloutStarted", message),
        )
    if state.phase != PROGRESSING:
        return Decision(state)
    if state.step_started is None:
        if not pods.ready:
            return hold(state, WAITING_FOR_CANARY, f"canary pods: {pods.detail}", now)
        if isinstance(observation, Unavailable):  # a step no numbers could judge
            return hold(state, METRICS_UNAVAILABLE, observation.reason, now)
        message = f"canary {plan.canary} at {plan.steps[0]}% (step 1 of {len(plan.steps)})"
        return Decision(
            State(plan.target, PROGRESSING, 0, now, message),
            Event("Normal", "RolloutStepStarted", message + ": its pods run the new revision"),
        )
    if isinstance(observation, Unavailable):
        return _unavailable(plan, state, observation.reason, now)
    step_over = now - state.step_started >= plan.step_seconds
    seen = observation.canary.requests if observation is not None else 0.0
    if observation is None or seen < plan.analysis.min_requests:
        if not step_over:
            return _going(state)
        why = (
            f"fewer than {plan.analysis.min_requests} canary answers in this step, the "
            f"least it is judged on ({seen:.0f} when the hold began)"
        )
        if observation is not None and observation.elsewhere:
            named = ", ".join(f"{v}: {n:.0f}" for v, n in sorted(observation.elsewhere.items()))
            why += (
                f"; not counted, answers of other versions ({named}): another revision's pods "
                f"still answer, or the archive's version is not {plan.version!r} as "
                "spec.variants[].model.version says"
            )
        return hold(state, NOT_ENOUGH_TRAFFIC, why, now)
    verdict = judge(plan.analysis, observation)
    if verdict.failed:
        message = (
            f"canary {plan.canary} rolled back to 0% at step {state.step + 1} of "
            f"{len(plan.steps)}: " + "; ".join(verdict.failed)
        )
        return Decision(
            replace(state, phase=ABORTED, message=message, holding="", holding_since=None),
            Event("Warning", "RolloutAborted", message),
        )
    if not step_over:
        return _going(state)
    if verdict.no_worse:
        return hold(state, NO_WORSE_THAN_STABLE, "; ".join(verdict.no_worse), now)
    if verdict.inconclusive:
        return hold(state, INCONCLUSIVE, "; ".join(verdict.inconclusive), now)
    if state.step + 1 >= len(plan.steps):
        message = f"canary {plan.canary} serves 100% after {len(plan.steps)} steps"
        return Decision(
            State(plan.target, SUCCEEDED, state.step, state.step_started, message),
            Event("Normal", "RolloutSucceeded", message + "; " + summary(observation)),
        )
    step = state.step + 1
    message = f"canary {plan.canary} at {plan.steps[step]}% (step {step + 1} of {len(plan.steps)})"
    return Decision(
        State(plan.target, PROGRESSING, step, now, message),
        Event("Normal", "RolloutStepAdvanced", message + "; " + summary(observation)),
    )


@dataclass(frozen=True)
class Verdict:
    failed: list[str]  # limits crossed conclusively, canary worse than stable: abort
    no_worse: list[str]  # crossed, but stable is as bad (a shared cause): hold
    inconclusive: list[str]  # over the limit, not (yet) conclusively: hold


def judge(analysis: Analysis, observation: Observation) -> Verdict:
    """Each limit of `analysis` against the canary's numbers (which the caller has checked
    are at least `min_requests`)."""
    canary, stable = observation.canary, observation.stable
    verdict = Verdict([], [], [])
    checks: list[tuple[float, float, float, float, str]] = []
    if analysis.max_error_ratio is not None:
        text = (
            f"error ratio {canary.error_ratio:.4f} > {analysis.max_error_ratio:g} "
            f"({canary.errors:.0f} of {canary.requests:.0f} requests; stable {_ratio(stable)})"
        )
        checks.append(
            (canary.errors, stable.errors, stable.requests, analysis.max_error_ratio, text)
        )
    if analysis.max_latency_p99_ms is not None:
        limit = analysis.max_latency_p99_ms
        slow, stable_slow = canary.slower_than(limit), stable.slower_than(limit)
        text = (
            f"p99 latency over {limit:g} ms: {slow:.0f} of {canary.requests:.0f} requests "
            f"({_percent(slow, canary.requests)}) slower, at most 1% allowed (stable "
            f"{_percent(stable_slow, stable.requests)})"
        )
        checks.append((slow, stable_slow, stable.requests, 1 - LATENCY_QUANTILE, text))
    for bad, stable_bad, stable_requests, limit, text in checks:
        if bad <= limit * canary.requests:
            continue
        worse = not stable_requests or bad / canary.requests > stable_bad / stable_requests
        if not worse:
            verdict.no_worse.append(text)
        elif exceeds(bad, canary.requests, limit):
            verdict.failed.append(text)
        else:
            verdict.inconclusive.append(text + ", not yet conclusive")
    return verdict


def exceeds(bad: float, total: float, limit: float) -> bool:
    """Whether `bad` of `total` says, at 99 %, that the true share is above `limit`: the chance
    of at least that many at exactly `limit` (binomial upper tail) is under SIGNIFICANCE."""
    n, k = round(total), round(bad)
    if k <= limit * n:
        return False
    if limit <= 0:
        return True
    if limit >= 1:
        return False
    log_p, log_q = math.log(limit), math.log1p(-limit)
    tail = 0.0
    for i in range(k, n + 1):
        term = math.exp(
            math.lgamma(n + 1)
            - math.lgamma(i + 1)
            - math.lgamma(n - i + 1)
            + i * log_p
            + (n - i) * log_q
        )
        tail += term
        if tail >= SIGNIFICANCE:
            return False
        if term < tail * 1e-12:
            break
    return tail < SIGNIFICANCE


def summary(observation: Observation) -> str:
    canary, stable = observation.canary, observation.stable
    return (
        f"canary {canary.requests:.0f} requests, error ratio {canary.error_ratio:.4f}, "
        f"p99 {_bucket(canary)}; stable {stable.requests:.0f} requests, "
        f"error ratio {_ratio(stable)}, p99 {_bucket(stable)}"
    )


def conditions(
    state: State, previous: Sequence[Mapping[str, Any]], now: float, generation: int
) -> list[dict[str, Any]]:
    """RolloutProgressing, RolloutAborted and RolloutHolding for `state`; a transition time
    moves only when the condition's status changes."""
    reason = {PROGRESSING: "StepInProgress", SUCCEEDED: SUCCEEDED, ABORTED: "AnalysisFailed"}
    progressing = reason[state.phase]
    if state.phase == PROGRESSING and state.step_started is None:
        progressing = WAITING_FOR_CANARY
    holding = bool(state.holding) and state.phase == PROGRESSING
    wanted = [
        (ROLLOUT_PROGRESSING, state.phase == PROGRESSING, progressing),
        (
            ROLLOUT_ABORTED,
            state.phase == ABORTED,
            "AnalysisFailed" if state.phase == ABORTED else "WithinLimits",
        ),
        (ROLLOUT_HOLDING, holding, state.holding if holding else "NotHolding"),
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


def hold(state: State, reason: str, why: str, now: float) -> Decision:
    """Stay on the current step, saying why and since when. The status is written when the
    reason changes (not on every tick), with an Event: a Warning when the metrics cannot be
    read, none while the canary's pods roll out (ModelsReady says how that goes)."""
    if state.holding == reason and state.holding_since is not None:
        return Decision(state)
    message = f"holding step {state.step + 1} since {_rfc3339(now)}: {why}"
    held = replace(state, message=message, holding=reason, holding_since=now)
    if reason == WAITING_FOR_CANARY:
        return Decision(held)
    if reason == METRICS_UNAVAILABLE:
        return Decision(held, Event("Warning", METRICS_UNAVAILABLE, message))
    return Decision(held, Event("Normal", "RolloutHolding", message))


def _going(state: State) -> Decision:
    """The step runs on; a hold that no longer applies ends."""
    if not state.holding:
        return Decision(state)
    message = f"step {state.step + 1} in progress ({state.holding} hold over)"
    return Decision(replace(state, holding="", holding_since=None, message=message))


def _unavailable(plan: Plan, state: State, why: str, now: float) -> Decision:
    decision = hold(state, METRICS_UNAVAILABLE, why, now)
    limit = plan.analysis.abort_after_metrics_unavailable
    since = decision.state.holding_since
    if limit is None or since is None or now - since < limit:
        return decision
    message = (
        f"canary {plan.canary} rolled back to 0% at step {state.step + 1} of "
        f"{len(plan.steps)}: no metrics for {now - since:.0f} s "
        f"(abortAfterMetricsUnavailableSeconds {limit:g}): {why}"
    )
    return Decision(
        replace(state, phase=ABORTED, message=message, holding="", holding_since=None),
        Event("Warning", "RolloutAborted", message),
    )


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


def _percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "no requests"


def _bucket(numbers: Numbers) -> str:
    bucket = numbers.quantile_bucket(LATENCY_QUANTILE)
    if bucket is None:
        return "n/a"
    lower, upper = bucket
    return f"over {lower:g} ms" if math.isinf(upper) else f"{lower:g}-{upper:g} ms"


def _rfc3339(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _epoch(text: str) -> float:
    try:
        return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return 0.0
