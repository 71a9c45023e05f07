"""The store without a cluster: children found by their owner label, late events ignored,
ownership moving, managedFields never kept."""

from __future__ import annotations

from typing import Any

from marfleet.operator import labels
from marfleet.operator.store import Store, owned_by, owner_key


def isvc(name: str = "m", rv: str = "10", namespace: str = "ns") -> dict[str, Any]:
    return {
        "apiVersion": "serving.marfleet.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{name}",
            "resourceVersion": rv,
            "managedFields": [{"manager": "kubectl"}],
        },
        "spec": {},
    }


def child(
    kind: str, name: str, owner: str | None = "m", rv: str = "20", namespace: str = "ns"
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "uid": f"uid-{kind}-{name}",
        "resourceVersion": rv,
        "labels": {labels.ISVC: owner} if owner else {},
        "managedFields": [{"manager": "marfleet-operator"}],
    }
    if owner:
        meta["ownerReferences"] = [{"uid": f"uid-{owner}", "controller": True}]
    return {"apiVersion": "v1", "kind": kind, "metadata": meta}


def test_inferenceservices_are_kept_by_namespace_and_name_without_managed_fields() -> None:
    store = Store()
    assert store.put_isvc(isvc()) == ("ns", "m")
    assert store.put_isvc(isvc(namespace="other")) == ("other", "m")
    assert set(store.isvcs) == {("ns", "m"), ("other", "m")}
    assert "managedFields" not in store.isvcs[("ns", "m")]["metadata"]
    assert store.remove_isvc(isvc()) == ("ns", "m")
    assert set(store.isvcs) == {("other", "m")}


def test_an_older_version_never_replaces_a_newer_one() -> None:
    store = Store()
    store.put_isvc(isvc(rv="12"))
    store.put_isvc(isvc(rv="11"))  # a late watch event after the operator's own status write
    assert store.isvcs[("ns", "m")]["metadata"]["resourceVersion"] == "12"
    store.put_isvc(isvc(rv="13"))
    assert store.isvcs[("ns", "m")]["metadata"]["resourceVersion"] == "13"
    assert store.put_child(child("Service", "m", rv="30")) == {("ns", "m")}
    assert store.put_child(child("Service", "m", rv="29")) == set(), "nothing to reconcile"
    assert store.children_of(("ns", "m"))[("Service", "m")]["metadata"]["resourceVersion"] == "30"


def test_the_same_version_again_changes_nothing_and_affects_no_one() -> None:
    """The watch event of the operator's own write carries the version its answer did."""
    store = Store()
    assert store.put_isvc(isvc(rv="12")) == ("ns", "m")
    assert store.put_isvc(isvc(rv="12")) is None
    assert store.put_child(child("Service", "m", rv="30")) == {("ns", "m")}
    assert store.put_child(child("Service", "m", rv="30")) == set()
    assert store.put_child(child("Service", "m", rv="31")) == {("ns", "m")}


def test_children_are_found_by_owner_label_and_put_returns_who_is_affected() -> None:
    store = Store()
    assert store.put_child(child("Deployment", "m-a")) == {("ns", "m")}
    assert store.put_child(child("Service", "m")) == {("ns", "m")}
    assert store.put_child(child("Service", "x", owner="n")) == {("ns", "n")}
    assert store.put_child(child("Service", "lonely", owner=None)) == set()
    assert sorted(store.children_of(("ns", "m"))) == [("Deployment", "m-a"), ("Service", "m")]
    assert store.children_of(("ns", "nobody")) == {}
    stored = store.children_of(("ns", "m"))[("Deployment", "m-a")]
    assert "managedFields" not in stored["metadata"]


def test_a_child_relabelled_to_another_owner_affects_both() -> None:
    store = Store()
    store.put_child(child("Service", "shared", owner="m"))
    assert store.put_child(child("Service", "shared", owner="n", rv="21")) == {
        ("ns", "m"),
        ("ns", "n"),
    }
    assert store.children_of(("ns", "m")) == {}
    assert list(store.children_of(("ns", "n"))) == [("Service", "shared")]


def test_removing_a_child_returns_its_owner_once_and_forgets_it() -> None:
    store = Store()
    store.put_child(child("Service", "m"))
    assert store.remove_child(child("Service", "m")) == {("ns", "m")}
    assert store.remove_child(child("Service", "m")) == set()
    assert store.children_of(("ns", "m")) == {}


def test_same_names_in_two_namespaces_stay_apart() -> None:
    store = Store()
    store.put_child(child("Service", "m", namespace="a"))
    store.put_child(child("Service", "m", namespace="b"))
    store.remove_child(child("Service", "m", namespace="a"))
    assert store.children_of(("a", "m")) == {}
    assert list(store.children_of(("b", "m"))) == [("Service", "m")]


def test_children_of_is_a_snapshot_the_caller_may_keep() -> None:
    store = Store()
    store.put_child(child("Service", "m"))
    snapshot = store.children_of(("ns", "m"))
    store.put_child(child("Deployment", "m-a"))
    assert list(snapshot) == [("Service", "m")]


def test_ownership_is_judged_by_the_controller_reference_uid() -> None:
    obj = child("Service", "m")
    assert owned_by(obj, "uid-m")
    assert not owned_by(obj, "uid-other")
    obj["metadata"]["ownerReferences"][0]["controller"] = False
    assert not owned_by(obj, "uid-m")
    assert owner_key(child("Service", "x", owner=None)) is None


def test_child_looks_one_up_without_copying() -> None:
    store = Store()
    store.put_child(child("Service", "m"))
    found = store.child(("ns", "m"), "Service", "m")
    assert found is not None and found["metadata"]["uid"] == "uid-Service-m"
    assert store.child(("ns", "m"), "Service", "other") is None
    assert store.child(("ns", "nobody"), "Service", "m") is None


def test_content_version_moves_on_any_change_but_status_and_bookkeeping() -> None:
    store = Store()
    assert store.content_version("ns", "Deployment", "m-a") == 0
    deploy = child("Deployment", "m-a", rv="20")
    deploy["spec"] = {"replicas": 1}
    store.put_child(deploy)
    first = store.content_version("ns", "Deployment", "m-a")
    assert first != 0
    status_only = {**deploy, "status": {"readyReplicas": 1}}
    status_only["metadata"] = {**deploy["metadata"], "resourceVersion": "21", "generation": 2}
    # the Deployment controller counts its rollouts in an annotation of its own
    status_only["metadata"]["annotations"] = {"deployment.kubernetes.io/revision": "1"}
    store.put_child(status_only)
    assert store.content_version("ns", "Deployment", "m-a") == first
    edited = {**status_only, "spec": {"replicas": 2}}
    edited["metadata"] = {**status_only["metadata"], "resourceVersion": "22"}
    store.put_child(edited)
    second = store.content_version("ns", "Deployment", "m-a")
    assert second != first
    relabelled = {**edited, "metadata": {**edited["metadata"], "resourceVersion": "23"}}
    relabelled["metadata"]["annotations"] = {"someone": "else"}
    store.put_child(relabelled)
    assert store.content_version("ns", "Deployment", "m-a") not in (first, second)
    store.remove_child(relabelled)
    assert store.content_version("ns", "Deployment", "m-a") == 0
