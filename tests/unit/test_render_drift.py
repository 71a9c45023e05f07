"""Drift detection between a rendered manifest and the live object the apiserver returns."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest
from marfleet.operator.compare import contained, in_sync, intent_hash, quantity, stamp
from marfleet.operator.labels import INTENT_HASH


def desired() -> dict[str, Any]:
    return stamp(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "m", "namespace": "ns", "labels": {"a": "1"}},
            "spec": {
                "template": {
                    "spec": {
                        "containers": [
                            {
                                "name": "server",
                                "resources": {"requests": {"cpu": "0.5", "memory": "1Gi"}},
                                "env": [{"name": "X", "value": "1"}],
                            }
                        ],
                        "volumes": [{"name": "tmp", "emptyDir": {}}],
                        "tolerations": [],
                    }
                }
            },
        }
    )


def live() -> dict[str, Any]:
    """What the apiserver gives back: defaults added, quantities canonical, empties dropped."""
    obj = copy.deepcopy(desired())
    obj["metadata"].update(uid="u", resourceVersion="7", labels={"a": "1", "added-by": "someone"})
    pod = obj["spec"]["template"]["spec"]
    pod.pop("tolerations")
    pod["restartPolicy"] = "Always"
    box = pod["containers"][0]
    box["resources"]["requests"]["cpu"] = "500m"
    box["terminationMessagePath"] = "/dev/termination-log"
    obj["status"] = {"replicas": 1}
    return obj


def test_what_the_apiserver_adds_is_not_drift() -> None:
    assert in_sync(desired(), live())


def test_missing_object_is_not_in_sync() -> None:
    assert not in_sync(desired(), None)


def test_hand_edited_value_is_drift() -> None:
    edited = live()
    edited["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = "2"
    assert not in_sync(desired(), edited)


def test_removed_list_item_is_drift() -> None:
    edited = live()
    edited["spec"]["template"]["spec"]["volumes"] = []
    assert not in_sync(desired(), edited)


def test_changed_intent_is_seen_even_when_fields_are_contained() -> None:
    """A field the operator stopped rendering is still live; only the hash tells."""
    before = copy.deepcopy(desired())
    before["spec"]["template"]["spec"]["volumes"][0]["emptyDir"] = {"medium": "Memory"}
    old = stamp(before)
    assert contained(desired()["spec"], old["spec"])
    assert not in_sync(desired(), old)


def test_hash_ignores_its_own_annotation() -> None:
    obj = desired()
    assert intent_hash(obj) == obj["metadata"]["annotations"][INTENT_HASH]
    assert intent_hash(stamp(copy.deepcopy(obj))) == intent_hash(obj)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", Decimal("0.5")),
        ("0.5", Decimal("0.5")),
        ("2", Decimal(2)),
        (2, Decimal(2)),
        ("1Gi", Decimal(2**30)),
        ("1024Mi", Decimal(2**30)),
        ("1e3", Decimal(1000)),
        ("1k", Decimal(1000)),
        ("100n", Decimal("1e-7")),
    ],
)
def test_quantity(text: str | int, value: Decimal) -> None:
    assert quantity(text) == value


@pytest.mark.parametrize("text", ["abc", "1Xi", "", True, None, 1.5])
def test_not_a_quantity(text: Any) -> None:
    assert quantity(text) is None
