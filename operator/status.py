"""What an InferenceService's status should say, from what its children report. Pure.

The operator owns `observedGeneration`, `url`, `traffic`, `variants` and four conditions
(Ready, ModelsReady, TrafficReady, AutoscalingReady); other controllers may add their own
conditions beside them (the status is applied server-side, conditions keyed by type).
A condition's lastTransitionTime only moves when its status changes, so recomputing the
status of a converged InferenceService gives exactly the stored one and nothing is written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from marfleet.runtime.storage.uri import redact

from . import labels, traffic
from .render import HPA_METRICS, Desired, RenderContext, url
from .spec import InferenceService

READY = "Ready"
MODELS_READY = "ModelsReady"
TRAFFIC_READY = "TrafficReady"
AUTOSCALING_READY = "AutoscalingReady"
OWN_CONDITIONS = (READY, MODELS_READY, TRAFFIC_READY, AUTOSCALING_READY)
OWN_FIELDS = ("observedGeneration", "url", "traffic", "conditions", "variants")
POLICY_REFUSED = "PolicyRefused"
PROGRESSING = frozenset({"VariantsNotReady", "ServiceMissing", "RouterNotReady"})
"""Reasons of a False condition that is on its way to True (not worth an Event at creation)."""

Children = Mapping[tuple[str, str], Mapping[str, Any]]
"""Live children of one InferenceService keyed by (kind, name)."""


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str


@dataclass(frozen=True)
class Transition:
    """A condition whose status changed, or that appeared False for a reason other than
    progress: worth a Kubernetes Event. (A new object's conditions appearing True, or False
    while its children are being created, are not news; nor is a part of Ready that changed
    with Ready the same way for the same reason: Ready's Event says it.)"""

    type: str
    status: str
    reason: str
    message: str


def compute(
    isvc: InferenceService,
    desired: Desired,
    children: Children,
    ctx: RenderContext,
    *,
    previous: Mapping[str, Any],
    errors: Sequence[str],
    now: str,
    weights: Mapping[str, int] | None = None,
    refused: Sequence[str] = (),
) -> tuple[dict[str, Any], list[Transition]]:
    """Return (the operator's part of the status, the condition transitions it implies).

    `refused`: what the tenancy policy does not allow (tenancy.refusals); Ready then says so.
    `weights` are the weights in force when a rollout sets them (rollout.effective_weights);
    without them the spec's weights are in force."""
    weights = weights or {v.name: v.weight for v in isvc.variants}
    models = _models_condition(isvc, desired, children)
    routing = _traffic_condition(isvc, desired, children, weights)
    scaling = _autoscaling_condition(isvc, children, ctx)
    ready = _ready_condition(models, routing, errors, refused)
    conditions, transitions = _with_transitions(
        [ready, models, routing, scaling], previous.get("conditions") or [], isvc.generation, now
    )
    status = {
        "observedGeneration": isvc.generation,
        "url": url(isvc, ctx),
        "traffic": ",".join(f"{v.name}={weights[v.name]}" for v in isvc.variants),
        "conditions": conditions,
        "variants": [
            _variant_status(isvc, v.name, children, weights[v.name]) for v in isvc.variants
        ],
    }
    return status, transitions


def own_part(status: Mapping[str, Any]) -> dict[str, Any]:
    """The fields and conditions of a stored status that this module computes."""
    part = {key: status[key] for key in OWN_FIELDS if key in status}
    if "conditions" in part:
        part["conditions"] = [c for c in part["conditions"] if c.get("type") in OWN_CONDITIONS]
    return part


STORAGE_SECRET_MISSING = "StorageSecretMissing"
TLS_SECRET_MISSING = "TLSSecretMissing"


def _deployment(children: Children, name: str) -> Mapping[str, Any] | None:
    return children.get(("Deployment", name))


def rollout_progress(deploy: Mapping[str, Any]) -> tuple[bool, str]:
    """(complete, what is missing) the way `kubectl rollout status` judges a Deployment: its
    controller has seen the current spec, every wanted replica is updated and available, and
    no replica of an older revision is left."""
    wanted = int(deploy.get("spec", {}).get("replicas", 1))
    st = deploy.get("status") or {}
    observed = int(st.get("observedGeneration", 0)) >= int(deploy["metadata"].get("generation", 1))
    updated = int(st.get("updatedReplicas", 0))
    available = int(st.get("availableReplicas", 0))
    total = int(st.get("replicas", 0))
    missing = []
    if not observed:
        missing.append("the Deployment's latest change is not yet picked up by its controller")
    if updated < wanted:
        missing.append(f"{updated}/{wanted} replicas updated")
    if available < wanted:
        missing.append(f"{available}/{wanted} replicas available")
    if total > updated:
        missing.append(f"{total - updated} replicas of the previous revision still running")
    return not missing, ", ".join(missing) or f"{available}/{wanted} replicas available"


def _models_condition(isvc: InferenceService, desired: Desired, children: Children) -> Condition:
    if desired.missing:
        detail = "; ".join(f"variant {v}: {m.message}" for v, m in desired.missing.items())
        first = next(iter(desired.missing.values()))
        return Condition(MODELS_READY, False, first.reason, detail)
    if desired.blocked:
        detail = "; ".join(f"variant {v}: {reason}" for v, reason in desired.blocked.items())
        return Condition(MODELS_READY, False, "UnsupportedModelURI", detail)
    waiting: list[str] = []
    for variant in isvc.variants:
        name = labels.variant_object_name(isvc, variant.name)
        deploy = _deployment(children, name)
        if deploy is None:
            waiting.append(f"{variant.name}: Deployment {name} not created yet")
            continue
        complete, progress = rollout_progress(deploy)
        if not complete:
            waiting.append(f"{variant.name}: {progress}")
    if waiting:
        return Condition(MODELS_READY, False, "VariantsNotReady", "; ".join(waiting))
    count = len(isvc.variants)
    noun = "variant" if count == 1 else "variants"
    return Condition(MODELS_READY, True, "ModelsServing", f"{count} {noun} serving")


def _traffic_condition(
    isvc: InferenceService,
    desired: Desired,
    children: Children,
    weights: Mapping[str, int],
) -> Condition:
    plan = desired.traffic
    available = plan.uses_router and traffic.router_ready(isvc, children)
    if plan.uses_router and not available and desired.router_missing is not None:
        missing = desired.router_missing
        return Condition(TRAFFIC_READY, False, missing.reason, f"{missing.message}; {plan.message}")
    if plan.uses_router and (not available or plan.reason != traffic.ROUTED):
        # The Service is switched to the router only by a pass that saw a router pod
        # available: one that came up during this pass is used by the next.
        name = labels.router_name(isvc)
        detail = (
            f"router Deployment {name} has a ready pod, and Service {isvc.name} is switched to "
            "it next"
            if available
            else f"no ready pod in router Deployment {name} yet"
        )
        return Condition(TRAFFIC_READY, False, "RouterNotReady", f"{detail}; {plan.message}")
    if ("Service", isvc.name) not in children:
        return Condition(
            TRAFFIC_READY, False, "ServiceMissing", f"Service {isvc.name} not created yet"
        )
    if plan.reason == traffic.ROUTED:  # the weights in force, which a rollout may set
        return Condition(TRAFFIC_READY, True, plan.reason, traffic.routed_message(isvc, weights))
    return Condition(TRAFFIC_READY, True, plan.reason, plan.message)


def _autoscaling_condition(
    isvc: InferenceService, children: Children, ctx: RenderContext
) -> Condition:
    scaling = isvc.autoscaling
    if scaling.engine == "none":
        return Condition(
            AUTOSCALING_READY,
            True,
            "FixedReplicas",
            f"each variant runs {scaling.min_replicas} replicas (engine none)",
        )
    if scaling.engine == "keda":
        if not ctx.keda_installed:
            return Condition(
                AUTOSCALING_READY,
                False,
                "KedaNotInstalled",
                "engine keda needs KEDA (CRD scaledobjects.keda.sh not found); each variant "
                f"runs a fixed {scaling.min_replicas} replicas until it is installed",
            )
        return Condition(
            AUTOSCALING_READY, True, "ScaledObject", "a KEDA ScaledObject scales each variant"
        )
    for variant in isvc.variants:
        name = labels.variant_object_name(isvc, variant.name)
        hpa = children.get(("HorizontalPodAutoscaler", name)) or {}
        for cond in (hpa.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "ScalingActive" and cond.get("status") == "False":
                return Condition(
                    AUTOSCALING_READY,
                    False,
                    str(cond.get("reason") or "ScalingInactive"),
                    f"HorizontalPodAutoscaler {name}: {cond.get('message', '')}",
                )
    metric = HPA_METRICS.get(scaling.metric, "cpu utilisation")
    return Condition(
        AUTOSCALING_READY,
        True,
        "HorizontalPodAutoscaler",
        f"each variant scales on {metric}, target {scaling.target_per_replica} per replica",
    )


def _ready_condition(
    models: Condition, routing: Condition, errors: Sequence[str], refused: Sequence[str]
) -> Condition:
    if refused:
        return Condition(
            READY,
            False,
            POLICY_REFUSED,
            "; ".join(refused) + ". Nothing is created or changed until the spec is allowed: "
            "remove these, or ask the cluster admin to allow them (chart values tenancy.*)",
        )
    if errors:
        return Condition(READY, False, "ApplyFailed", "; ".join(errors))
    for part in (models, routing):
        if not part.status:
            return Condition(READY, False, part.reason, part.message)
    return Condition(READY, True, "Ready", f"{models.message}; {routing.message}")


def _with_transitions(
    computed: list[Condition], previous: Sequence[Mapping[str, Any]], generation: int, now: str
) -> tuple[list[dict[str, Any]], list[Transition]]:
    before = {c.get("type"): c for c in previous}
    conditions: list[dict[str, Any]] = []
    transitions: list[Transition] = []
    for cond in computed:
        status = "True" if cond.status else "False"
        old = before.get(cond.type) or {}
        changed = old.get("status") != status
        conditions.append(
            {
                "type": cond.type,
                "status": status,
                "reason": cond.reason,
                "message": cond.message,
                "lastTransitionTime": now if changed else old.get("lastTransitionTime", now),
                "observedGeneration": generation,
            }
        )
        expected = cond.status or cond.reason in PROGRESSING
        if changed and not (not old and expected):
            transitions.append(Transition(cond.type, status, cond.reason, cond.message))
    return conditions, _folded_into_ready(transitions)


def _folded_into_ready(transitions: list[Transition]) -> list[Transition]:
    """Without the transitions Ready's own says: a part that became True with Ready (Ready's
    message names every part), or False for the reason Ready gives (Ready carries its
    message). An Event is a write, and one InferenceService coming up made three."""
    ready = next((t for t in transitions if t.type == READY), None)
    if ready is None:
        return transitions
    return [
        t
        for t in transitions
        if t is ready
        or t.status != ready.status
        or (t.status == "False" and t.reason != ready.reason)
    ]


def _variant_status(
    isvc: InferenceService, variant: str, children: Children, weight: int
) -> dict[str, Any]:
    spec = next(v for v in isvc.variants if v.name == variant)
    deploy = _deployment(children, labels.variant_object_name(isvc, variant)) or {}
    st = deploy.get("status") or {}
    return {
        "name": variant,
        "weight": weight,
        "replicas": int(st.get("replicas", 0)),
        "readyReplicas": int(st.get("readyReplicas", 0)),
        "modelVersion": spec.model.version,
        "modelURI": redact(spec.model.uri),
    }
