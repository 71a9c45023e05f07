"""Status computed from what the children report: conditions, transitions, per-variant state."""

from __future__ import annotations

from typing import Any

from marfleet.operator import render, spec, status

CTX = render.RenderContext(default_image="img")
T0 = "2030-01-01T00:00:00Z"
T1 = "2030-01-01T00:05:00Z"


def isvc_obj(engine: str = "hpa", uri: str = "https://h/b.mar") -> dict[str, Any]:
    return {
        "metadata": {"name": "m", "namespace": "ns", "uid": "u", "generation": 4},
        "spec": {
            "variants": [
                {"name": "a", "weight": 70, "model": {"uri": "https://h/a.mar", "version": "1"}},
                {"name": "b", "weight": 30, "model": {"uri": uri, "version": "2"}},
            ],
            "autoscaling": {"engine": engine},
        },
    }


def deployment(name: str, ready: int, wanted: int = 1, observed: bool = True) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "generation": 2},
        "spec": {"replicas": wanted},
        "status": {
            "observedGeneration": 2 if observed else 1,
            "replicas": wanted,
            "updatedReplicas": wanted,
            "readyReplicas": ready,
            "availableReplicas": ready,
        },
    }


def children(ready: int = 1) -> dict[tuple[str, str], Any]:
    return {
        ("Deployment", "m-a"): deployment("m-a", ready),
        ("Deployment", "m-b"): deployment("m-b", ready),
        ("Deployment", "m-router"): deployment("m-router", 2, wanted=2),
        ("Service", "m"): {"metadata": {"name": "m"}},
    }


def compute(
    obj: dict[str, Any],
    kids: dict[tuple[str, str], Any],
    previous: dict[str, Any] | None = None,
    errors: list[str] | None = None,
    now: str = T0,
    ctx: render.RenderContext = CTX,
) -> tuple[dict[str, Any], list[status.Transition]]:
    isvc = spec.parse(obj)
    return status.compute(
        isvc,
        render.render(isvc, ctx),
        kids,
        ctx,
        previous=previous or {},
        errors=errors or [],
        now=now,
    )


def conditions(st: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]}


def test_nothing_created_yet() -> None:
    st, transitions = compute(isvc_obj(), {})
    assert conditions(st) == {
        "Ready": ("False", "VariantsNotReady"),
        "ModelsReady": ("False", "VariantsNotReady"),
        "TrafficReady": ("False", "RouterNotReady"),
        "AutoscalingReady": ("True", "HorizontalPodAutoscaler"),
    }
    assert "a: Deployment m-a not created yet" in st["conditions"][1]["message"]
    assert transitions == [], "a new object's progress is not worth Events"


def test_converged_status_and_fields() -> None:
    st, _ = compute(isvc_obj(), children())
    assert conditions(st)["Ready"] == ("True", "Ready")
    assert conditions(st)["ModelsReady"] == ("True", "ModelsServing")
    assert conditions(st)["TrafficReady"] == ("True", "Routed")
    assert st["observedGeneration"] == 4
    assert st["url"] == "http://m.ns.svc.cluster.local"
    assert st["traffic"] == "a=70,b=30"
    assert st["variants"] == [
        {
            "name": "a",
            "weight": 70,
            "replicas": 1,
            "readyReplicas": 1,
            "modelVersion": "1",
            "modelURI": "https://h/a.mar",
        },
        {
            "name": "b",
            "weight": 30,
            "replicas": 1,
            "readyReplicas": 1,
            "modelVersion": "2",
            "modelURI": "https://h/b.mar",
        },
    ]
    assert all(
        c["lastTransitionTime"] == T0 and c["observedGeneration"] == 4 for c in st["conditions"]
    )


def test_recomputing_a_converged_status_changes_nothing() -> None:
    first, _ = compute(isvc_obj(), children())
    again, transitions = compute(isvc_obj(), children(), previous=first, now=T1)
    assert again == first
    assert transitions == []


def test_transition_time_moves_only_with_status() -> None:
    first, _ = compute(isvc_obj(), {}, now=T0)
    creating, _ = compute(isvc_obj(), children(ready=0), previous=first, now=T1)
    models = next(c for c in creating["conditions"] if c["type"] == "ModelsReady")
    assert (models["status"], models["lastTransitionTime"]) == ("False", T0)
    ready, transitions = compute(isvc_obj(), children(), previous=creating, now=T1)
    assert next(c for c in ready["conditions"] if c["type"] == "Ready")["lastTransitionTime"] == T1
    # ModelsReady became True with Ready, whose Event says so: one Event, not two
    assert [(t.type, t.status) for t in transitions] == [("Ready", "True")]


def test_rollout_in_progress_is_not_ready() -> None:
    kids = children()
    kids[("Deployment", "m-b")] = deployment("m-b", 1, observed=False)
    st, _ = compute(isvc_obj(), kids)
    assert conditions(st)["ModelsReady"] == ("False", "VariantsNotReady")
    # It says what is missing, not "1/1 replicas ready" as if nothing were.
    message = st["conditions"][1]["message"]
    assert message == "b: the Deployment's latest change is not yet picked up by its controller"


def test_a_deployment_with_old_replicas_left_is_not_rolled_out() -> None:
    kids = children()
    old_left = deployment("m-b", 1)
    old_left["status"].update(replicas=2, updatedReplicas=1)
    kids[("Deployment", "m-b")] = old_left
    st, _ = compute(isvc_obj(), kids)
    assert st["conditions"][1]["message"] == "b: 1 replicas of the previous revision still running"


def test_traffic_ready_names_the_weights_in_force() -> None:
    isvc = spec.parse(isvc_obj())
    kids = {**children(), ("Deployment", "m-router"): {"status": {"availableReplicas": 1}}}
    ctx = render.RenderContext(default_image="img")
    st, _ = status.compute(
        isvc,
        render.render(isvc, ctx, router_ready=True),
        kids,
        ctx,
        previous={},
        errors=[],
        now=T0,
        weights={"a": 100, "b": 0},
    )
    traffic_ready = next(c for c in st["conditions"] if c["type"] == "TrafficReady")
    assert traffic_ready["message"] == "router m-router splits traffic a=100,b=0"
    assert st["traffic"] == "a=100,b=0"


def test_unsupported_uri_is_reported() -> None:
    st, _ = compute(isvc_obj(uri="s3://Bucket/b.mar"), children())
    assert conditions(st)["ModelsReady"] == ("False", "UnsupportedModelURI")
    assert conditions(st)["Ready"] == ("False", "UnsupportedModelURI")
    assert (
        "variant b: model URI 's3://bucket/b.mar': 'Bucket' is not a bucket"
        in st["conditions"][0]["message"]
    )


def test_a_new_object_with_a_real_problem_gets_an_event() -> None:
    _, transitions = compute(isvc_obj(uri="s3://Bucket/b.mar"), {})
    # one Event: ModelsReady fails for the reason Ready gives, with the same message
    assert [(t.type, t.status, t.reason) for t in transitions] == [
        ("Ready", "False", "UnsupportedModelURI"),
    ]


def test_apply_errors_make_it_not_ready() -> None:
    st, _ = compute(isvc_obj(), children(), errors=["Deployment m-a: invalid"])
    assert conditions(st)["Ready"] == ("False", "ApplyFailed")
    assert st["conditions"][0]["message"] == "Deployment m-a: invalid"


def test_keda_missing_does_not_block_readiness() -> None:
    st, _ = compute(isvc_obj(engine="keda"), children())
    assert conditions(st)["AutoscalingReady"] == ("False", "KedaNotInstalled")
    assert conditions(st)["Ready"] == ("True", "Ready")
    keda = render.RenderContext(default_image="img", keda_installed=True)
    st, _ = compute(isvc_obj(engine="keda"), children(), ctx=keda)
    assert conditions(st)["AutoscalingReady"] == ("True", "ScaledObject")


def test_hpa_without_metrics_is_reported() -> None:
    hpa = {
        "metadata": {"name": "m-b"},
        "status": {
            "conditions": [
                {
                    "type": "ScalingActive",
                    "status": "False",
                    "reason": "FailedGetPodsMetric",
                    "message": "unable to get metric marfleet_requests_per_second",
                }
            ]
        },
    }
    kids = children()
    kids[("HorizontalPodAutoscaler", "m-b")] = hpa
    st, _ = compute(isvc_obj(), kids)
    assert conditions(st)["AutoscalingReady"] == ("False", "FailedGetPodsMetric")
    assert "HorizontalPodAutoscaler m-b: unable to get metric" in st["conditions"][3]["message"]


def test_router_must_be_available_when_used() -> None:
    kids = children()
    del kids[("Deployment", "m-router")]
    st, _ = compute(isvc_obj(), kids)
    assert conditions(st)["TrafficReady"] == ("False", "RouterNotReady")
    st, _ = compute(isvc_obj(), children())
    assert conditions(st)["TrafficReady"] == ("True", "Routed")


def test_a_router_that_came_up_during_the_pass_is_not_routed_to_yet() -> None:
    """The pass rendered the Service on the first variant (no router pod when it began), and a
    router pod became available before the status was computed: traffic is not routed yet, so
    TrafficReady (and Ready) stay False until the next pass switches the Service."""
    isvc = spec.parse(isvc_obj())
    st, _ = status.compute(
        isvc,
        render.render(isvc, CTX, router_ready=False),
        children(),
        CTX,
        previous={},
        errors=[],
        now=T0,
    )
    assert conditions(st)["TrafficReady"] == ("False", "RouterNotReady")
    assert conditions(st)["Ready"][0] == "False"
    assert "has a ready pod, and Service m is switched to it next" in st["conditions"][2]["message"]


def test_own_part_leaves_other_controllers_conditions_out() -> None:
    stored = {
        "url": "u",
        "conditions": [
            {"type": "Ready", "status": "True"},
            {"type": "RolloutProgressing", "status": "True"},
        ],
        "somethingElse": 1,
    }
    assert status.own_part(stored) == {
        "url": "u",
        "conditions": [{"type": "Ready", "status": "True"}],
    }


def test_a_policy_refusal_wins_over_everything_else_and_says_what_to_do() -> None:
    isvc = spec.parse(isvc_obj())
    refusal = "spec.runtime.env[0].valueFrom.secretKeyRef.name: Secret ns/t is not allowed"
    st, transitions = status.compute(
        isvc,
        render.render(isvc, CTX),
        children(),
        CTX,
        previous={},
        errors=["Deployment m-a: invalid"],
        refused=[refusal],
        now=T0,
    )
    assert conditions(st)["Ready"] == ("False", "PolicyRefused")
    message = st["conditions"][0]["message"]
    assert message.startswith(refusal) and "ask the cluster admin" in message
    assert ("Ready", "False", "PolicyRefused") in [
        (t.type, t.status, t.reason) for t in transitions
    ]
