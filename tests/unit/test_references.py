"""What each rendered child names: the order the controller creates children in."""

from __future__ import annotations

from typing import Any

from marfleet.operator import references, render, spec


def rendered(variants: list[str]) -> dict[tuple[str, str], dict[str, Any]]:
    isvc = spec.parse(
        {
            "apiVersion": "serving.marfleet.io/v1alpha1",
            "kind": "InferenceService",
            "metadata": {"name": "m", "namespace": "shop", "uid": "u", "generation": 1},
            "spec": {
                "variants": [
                    {
                        "name": v,
                        "weight": 100 // len(variants),
                        "model": {"uri": f"https://h/{v}.mar"},
                    }
                    for v in variants
                ],
                "autoscaling": {"engine": "hpa", "minReplicas": 2, "maxReplicas": 4},
            },
        }
    )
    desired = render.render(isvc, render.RenderContext(default_image="img"), router_ready=True)
    return {(o["kind"], o["metadata"]["name"]): o for o in desired.objects}


def test_each_child_names_only_children_of_the_same_inferenceservice() -> None:
    objects = rendered(["a", "b"])
    named = {ref: references.named_by(obj) for ref, obj in objects.items()}
    assert named[("Deployment", "m-a")] == {("ConfigMap", "m-a")}
    assert named[("Deployment", "m-router")] == {
        ("ServiceAccount", "m-router"),
        ("Service", "m-a"),
        ("Service", "m-b"),
    }
    assert named[("RoleBinding", "m-router")] == {
        ("Role", "m-router"),
        ("ServiceAccount", "m-router"),
    }
    assert named[("HorizontalPodAutoscaler", "m-a")] == {("Deployment", "m-a")}
    assert named[("PodDisruptionBudget", "m-a")] == {("Deployment", "m-a")}
    assert named[("PodDisruptionBudget", "m-router")] == {("Deployment", "m-router")}
    for kind in ("ConfigMap", "Service", "ServiceAccount", "Role"):
        assert all(not names for (k, _), names in named.items() if k == kind)
    # every name a child gives is one of this InferenceService's children: nothing waits for
    # an object the operator does not make
    assert set().union(*named.values()) <= set(objects)


def test_an_outline_names_nothing() -> None:
    outline = {"kind": "Deployment", "metadata": {"name": "m-a"}}
    assert references.named_by(outline) == set()
