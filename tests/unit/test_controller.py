"""The controller's decisions without a cluster: given a picture in the store (fed the way the
watches feed it), which writes does a reconciliation make? The API is the in-memory fake of
tests/unit/fakekube.py, which records every call; the same flows against the real API server
are in tests/integration/test_operator.py."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator, Mapping
from typing import Any, cast

import pytest
from marfleet.operator import labels
from marfleet.operator.controller import Controller, ControllerSettings
from marfleet.operator.kube import ApiError, KubeAPI
from marfleet.operator.metrics import OperatorMetrics
from marfleet.operator.render import RenderContext
from marfleet.operator.spec import API_VERSION, KIND

from tests.unit.fakekube import FakeKubeAPI

NS = "ns"
KEY = (NS, "m")


def isvc(*variants: str, engine: str = "hpa") -> dict[str, Any]:
    names = variants or ("main",)
    weights = [100 // len(names)] * len(names)
    weights[0] += 100 - sum(weights)
    scaling: dict[str, Any] = {"engine": engine, "minReplicas": 1}
    if engine == "hpa":
        scaling["maxReplicas"] = 3
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": "m", "namespace": NS, "generation": 1},
        "spec": {
            "variants": [
                {"name": v, "weight": w, "model": {"uri": f"https://h/{v}.mar"}}
                for v, w in zip(names, weights, strict=True)
            ],
            "autoscaling": scaling,
        },
    }


class Harness:
    """A controller on the fake API, with helpers that play the watches' part."""

    def __init__(self, api: FakeKubeAPI | None = None) -> None:
        self.api = api or FakeKubeAPI()
        settings = ControllerSettings(
            render=RenderContext(default_image="img"), identity="test", now=lambda: "T"
        )
        self.controller = Controller(cast(KubeAPI, self.api), settings, OperatorMetrics())
        self.controller.children_listed = lambda: True  # the helpers below play the watches

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        stored = self.api.put(obj)
        self.controller.on_inferenceservice("ADDED", stored)
        return stored

    def reconcile(self, key: tuple[str, str] = KEY) -> list[tuple[str, str, str]]:
        """Reconcile once; return the writes it made."""
        before = len(self.api.writes)
        asyncio.run(self.controller.reconcile(key))
        return self.api.writes[before:]

    def watch_everything(self) -> None:
        """Deliver every stored object to the controller, as the watches' lists would."""
        for obj in list(self.api.objects.values()):
            if obj["kind"] == KIND:
                self.controller.on_inferenceservice("MODIFIED", copy.deepcopy(obj))
            elif obj["kind"] != "Event":
                self.controller.on_child("MODIFIED", copy.deepcopy(obj))

    def roll_out(self) -> None:
        """Play the Deployment controller: every Deployment reports its replicas ready."""
        for obj in self.api.objects.values():
            if obj["kind"] == "Deployment":
                wanted = obj["spec"].get("replicas", 1)
                obj["status"] = {
                    "observedGeneration": obj["metadata"]["generation"],
                    "replicas": wanted,
                    "updatedReplicas": wanted,
                    "readyReplicas": wanted,
                    "availableReplicas": wanted,
                }
                obj["metadata"]["resourceVersion"] = str(
                    int(obj["metadata"]["resourceVersion"]) + 1000
                )
        self.watch_everything()

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.api.stored(API_VERSION, KIND, NS, "m").get("status") or {}
        return status

    def condition(self, kind: str) -> tuple[str, str]:
        found = next(c for c in self.status()["conditions"] if c["type"] == kind)
        return found["status"], found["reason"]

    def events(self) -> list[tuple[str, str]]:
        return [(o["type"], o["reason"]) for o in self.api.objects.values() if o["kind"] == "Event"]

    def children(self) -> set[tuple[str, str]]:
        return {
            (kind, name)
            for (_, kind, _, name), obj in self.api.objects.items()
            if kind not in (KIND, "Event")
        }


@pytest.fixture
def h() -> Iterator[Harness]:
    yield Harness()


def converge(h: Harness, obj: dict[str, Any]) -> None:
    h.create(obj)
    h.reconcile()
    h.roll_out()
    h.reconcile()
    h.roll_out()  # a multi-variant router becomes available only after the first pass
    h.reconcile()
    assert h.condition("Ready") == ("True", "Ready")


def test_a_new_inferenceservice_gets_its_children_and_a_status_in_one_pass(h: Harness) -> None:
    h.create(isvc())
    writes = h.reconcile()
    applied = sorted((kind, name) for verb, kind, name in writes if verb == "apply")
    assert applied == [
        ("ConfigMap", "m-main"),
        ("Deployment", "m-main"),
        ("HorizontalPodAutoscaler", "m-main"),
        ("Service", "m"),
        ("Service", "m-main"),
    ]
    assert [w for w in writes if w[0] != "apply"] == [("status", KIND, "m")]
    assert h.condition("Ready") == ("False", "VariantsNotReady")
    assert h.events() == [], "a new object's progress is not news"


def test_a_converged_inferenceservice_is_reconciled_without_a_single_call(h: Harness) -> None:
    converge(h, isvc("a", "b"))
    h.api.calls.clear()
    for _ in range(3):
        assert h.reconcile() == []
    assert h.api.calls == [], "no reads either: the store has everything"


def test_reaching_ready_writes_the_status_and_one_event(h: Harness) -> None:
    converge(h, isvc())
    assert h.status()["variants"][0]["readyReplicas"] == 1
    assert ("Normal", "Ready") in h.events()


def test_a_hand_edited_child_is_repaired_and_nothing_else_is_written(h: Harness) -> None:
    converge(h, isvc())
    deploy = h.api.stored("apps/v1", "Deployment", NS, "m-main")
    deploy["spec"]["template"]["spec"]["containers"][0]["image"] = "someone/else:1"
    deploy["metadata"]["resourceVersion"] = "9999"
    h.controller.on_child("MODIFIED", copy.deepcopy(deploy))
    assert h.controller.queue.depth() == 1, "the child's event queued its owner"
    assert h.reconcile() == [("apply", "Deployment", "m-main")]
    image = h.api.stored("apps/v1", "Deployment", NS, "m-main")["spec"]["template"]["spec"][
        "containers"
    ][0]["image"]
    assert image == "img"


def test_a_hand_deleted_child_is_recreated(h: Harness) -> None:
    converge(h, isvc())
    gone = h.api.objects.pop(("v1", "Service", NS, "m"))
    h.controller.on_child("DELETED", gone)
    writes = h.reconcile()
    assert ("apply", "Service", "m") in writes
    assert [w for w in writes if w[0] == "apply"] == [("apply", "Service", "m")]


def test_a_spec_change_applies_only_what_it_changes(h: Harness) -> None:
    converge(h, isvc(engine="none"))
    obj = h.api.stored(API_VERSION, KIND, NS, "m")
    obj["spec"]["autoscaling"]["minReplicas"] = 3
    obj["metadata"]["generation"] = 2
    obj["metadata"]["resourceVersion"] = "99999"
    h.controller.on_inferenceservice("MODIFIED", copy.deepcopy(obj))
    writes = h.reconcile()
    assert sorted(w for w in writes if w[0] == "apply") == [
        ("apply", "Deployment", "m-main"),
        ("apply", "PodDisruptionBudget", "m-main"),
    ]
    assert h.api.stored("apps/v1", "Deployment", NS, "m-main")["spec"]["replicas"] == 3
    assert h.status()["observedGeneration"] == 2


def test_a_removed_variant_is_pruned_and_the_router_goes_with_the_second_variant(
    h: Harness,
) -> None:
    converge(h, isvc("a", "b"))
    assert ("Deployment", "m-router") in h.children()
    obj = h.api.stored(API_VERSION, KIND, NS, "m")
    obj["spec"]["variants"] = [{**obj["spec"]["variants"][0], "weight": 100}]
    obj["metadata"].update(generation=2, resourceVersion="99999")
    h.controller.on_inferenceservice("MODIFIED", copy.deepcopy(obj))
    writes = h.reconcile()
    deleted = sorted((kind, name) for verb, kind, name in writes if verb == "delete")
    assert ("Deployment", "m-b") in deleted
    assert ("Deployment", "m-router") in deleted
    assert not [c for c in h.children() if c[1] in ("m-b", "m-router")]
    assert ("Deployment", "m-a") in h.children()


def test_the_stable_service_moves_to_the_router_only_once_a_router_pod_is_available(
    h: Harness,
) -> None:
    h.create(isvc("a", "b"))
    h.reconcile()
    selector = h.api.stored("v1", "Service", NS, "m")["spec"]["selector"]
    assert selector[labels.COMPONENT] == labels.RUNTIME
    assert h.condition("TrafficReady") == ("False", "RouterNotReady")
    h.roll_out()
    h.reconcile()
    selector = h.api.stored("v1", "Service", NS, "m")["spec"]["selector"]
    assert selector[labels.COMPONENT] == labels.ROUTER


def test_a_name_taken_by_someone_else_is_reported_not_overwritten(h: Harness) -> None:
    theirs = h.api.put(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "m", "namespace": NS, "labels": {labels.ISVC: "m"}},
            "spec": {"selector": {"app": "theirs"}},
        }
    )
    h.controller.on_child("ADDED", theirs)
    h.create(isvc())
    writes = h.reconcile()
    assert ("apply", "Service", "m") not in writes
    assert h.api.stored("v1", "Service", NS, "m")["spec"]["selector"] == {"app": "theirs"}
    ready, reason = h.condition("Ready")
    assert (ready, reason) == ("False", "ApplyFailed")
    assert ("Warning", "ApplyFailed") in h.events()
    events = len(h.events())
    h.reconcile()
    assert len(h.events()) == events, "the same problem is reported once"


def test_a_child_the_api_server_refuses_is_reported_and_the_rest_applied(h: Harness) -> None:
    h.create(isvc())
    original = h.api.apply

    async def refusing(obj: Mapping[str, Any]) -> dict[str, Any]:
        if obj["kind"] == "HorizontalPodAutoscaler":
            raise ApiError(422, "Invalid", "spec.maxReplicas: must be at least 1")
        return await original(obj)

    h.api.apply = refusing  # type: ignore[method-assign]
    h.reconcile()
    assert ("Deployment", "m-main") in h.children()
    assert h.condition("Ready") == ("False", "ApplyFailed")
    message = next(c for c in h.status()["conditions"] if c["type"] == "Ready")["message"]
    assert "HorizontalPodAutoscaler m-main: spec.maxReplicas" in message


def test_a_retriable_error_fails_the_reconciliation_for_a_retry(h: Harness) -> None:
    h.create(isvc())
    h.api.fail = [ApiError(0, "ConnectionRefusedError", "no route")] * 20
    with pytest.raises(ApiError):
        h.reconcile()


def test_a_restart_with_everything_listed_writes_nothing(h: Harness) -> None:
    converge(h, isvc("a", "b"))
    restarted = Harness(h.api)
    restarted.watch_everything()
    restarted.api.calls.clear()
    assert restarted.reconcile() == []
    assert restarted.api.calls == []


def test_a_restart_before_the_children_are_listed_reads_them_and_writes_nothing(
    h: Harness,
) -> None:
    converge(h, isvc("a", "b"))
    restarted = Harness(h.api)
    restarted.controller.children_listed = lambda: False
    restarted.controller.on_inferenceservice(
        "ADDED", copy.deepcopy(h.api.stored(API_VERSION, KIND, NS, "m"))
    )
    restarted.api.calls.clear()
    assert restarted.reconcile() == [], "children read from the API server, found in sync"
    assert {verb for verb, _, _ in restarted.api.calls} == {"get"}


def test_a_deleted_or_deleting_inferenceservice_is_left_alone(h: Harness) -> None:
    stored = h.create(isvc())
    stored["metadata"]["deletionTimestamp"] = "2030-01-01T00:00:00Z"
    stored["metadata"]["resourceVersion"] += "1"  # a new version, as the API server writes it
    h.controller.on_inferenceservice("MODIFIED", stored)
    assert h.reconcile() == []
    h.controller.on_inferenceservice("DELETED", stored)
    assert KEY not in h.controller.store.isvcs
    assert h.reconcile() == []


def test_child_events_queue_only_their_known_owner(h: Harness) -> None:
    h.create(isvc())
    h.reconcile()
    queue = h.controller.queue
    while queue.depth():
        queue.done(asyncio.run(queue.get()))
    stray = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "x", "namespace": NS, "labels": {labels.ISVC: "unknown"}},
    }
    h.controller.on_child("ADDED", stray)
    assert queue.depth() == 0
    own = copy.deepcopy(h.api.stored("v1", "ConfigMap", NS, "m-main"))
    h.controller.on_child("MODIFIED", own)
    assert queue.depth() == 0, "the event of the operator's own write brings nothing new"
    own["metadata"]["resourceVersion"] += "1"  # a later version: someone else's write
    h.controller.on_child("MODIFIED", own)
    assert queue.depth() == 1


class RbacCheckingAPI(FakeKubeAPI):
    """Refuses a RoleBinding whose Role does not exist yet, as the API server does when the
    operator (holding no `bind` verb) creates one: it checks the Role's rules against the
    operator's own, and answers NotFound without the Role. Applying a Role takes a moment, as
    over the network. (A fake because the local control plane's admin credentials skip that
    check.)"""

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        if obj["kind"] == "Role":
            await asyncio.sleep(0.05)
        if obj["kind"] == "RoleBinding":
            role = obj["roleRef"]["name"]
            if (
                "rbac.authorization.k8s.io/v1",
                "Role",
                meta["namespace"],
                role,
            ) not in self.objects:
                raise ApiError(
                    404, "NotFound", f'roles.rbac.authorization.k8s.io "{role}" not found'
                )
        return await super().apply(obj)


def test_a_new_router_gets_its_role_before_the_binding_so_creation_reports_no_failure() -> None:
    h = Harness(RbacCheckingAPI())
    converge(h, isvc("a", "b"))
    assert ("RoleBinding", "m-router") in h.children()
    assert [e for e in h.events() if e[1] == "ApplyFailed"] == []


class SlowServicesAPI(FakeKubeAPI):
    """Creates Services slowly, as the API server does under load (it allocates cluster IPs
    one at a time), and records when each creation finished."""

    def __init__(self) -> None:
        super().__init__()
        self.finished: list[tuple[str, str]] = []

    async def apply_new(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        if obj["kind"] == "Service":
            await asyncio.sleep(0.1)
        result = await super().apply_new(obj)
        self.finished.append((obj["kind"], obj["metadata"]["name"]))
        return result


def test_a_slow_service_holds_up_only_what_names_it() -> None:
    api = SlowServicesAPI()
    h = Harness(api)
    h.create(isvc("a", "b"))
    h.reconcile()
    order = api.finished.index
    services = [order(("Service", name)) for name in ("m-a", "m-b", "m", "m-router")]
    # a variant's Deployment names its ConfigMap only: made before any Service is done
    for name in ("m-a", "m-b"):
        assert order(("ConfigMap", name)) < order(("Deployment", name)) < min(services)
        assert order(("Deployment", name)) < order(("HorizontalPodAutoscaler", name))
    # the router's Deployment names the variant Services it routes to: made after them
    router = order(("Deployment", "m-router"))
    assert order(("Service", "m-a")) < router and order(("Service", "m-b")) < router
    assert (
        order(("ServiceAccount", "m-router")) < router < order(("PodDisruptionBudget", "m-router"))
    )
    assert order(("Role", "m-router")) < order(("RoleBinding", "m-router"))


def test_requeues_with_the_same_inputs_do_not_render_again(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from marfleet.operator import render

    converge(h, isvc())
    renders = 0
    original = render.render

    def counting(*args: Any, **kwargs: Any) -> render.Desired:
        nonlocal renders
        renders += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(render, "render", counting)
    deploy = h.api.stored("apps/v1", "Deployment", NS, "m-main")
    deploy["status"]["readyReplicas"] = 0
    deploy["metadata"]["resourceVersion"] = "77777"
    h.controller.on_child("MODIFIED", copy.deepcopy(deploy))
    h.reconcile()
    assert renders == 0, "a child's status event changes no input of the render"
    obj = h.api.stored(API_VERSION, KIND, NS, "m")
    obj["spec"]["variants"][0]["model"]["uri"] = "https://h/new.mar"
    obj["metadata"].update(generation=2, resourceVersion="99999")
    h.controller.on_inferenceservice("MODIFIED", copy.deepcopy(obj))
    writes = h.reconcile()
    assert renders == 1
    assert ("apply", "Deployment", "m-main") in writes


def test_a_deployment_someone_else_owns_gets_no_autoscaler_service_or_config(h: Harness) -> None:
    theirs = h.api.put(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "m-main", "namespace": NS},
            "spec": {"replicas": 5},
        }
    )
    h.create(isvc())
    writes = h.reconcile()
    assert ("apply-refused", "Deployment", "m-main") in h.api.calls
    assert ("apply", "HorizontalPodAutoscaler", "m-main") not in writes, "never created"
    assert h.api.stored("apps/v1", "Deployment", NS, "m-main") == theirs
    assert h.children() == {("Deployment", "m-main")}, "what this pass made is taken back"
    assert h.condition("Ready") == ("False", "ApplyFailed")
    message = next(c for c in h.status()["conditions"] if c["type"] == "Ready")["message"]
    assert "Deployment m-main already exists and is not this InferenceService's" in message
    h.api.calls.clear()
    assert h.reconcile() == [], "from now on the names are read first: nothing is created"
    assert {verb for verb, _, _ in h.api.calls} == {"get"}
    h.controller.on_child("DELETED", h.api.objects.pop(("apps/v1", "Deployment", NS, "m-main")))
    h.reconcile()
    assert h.condition("Ready")[1] != "ApplyFailed", "once the name is free, it is used"
    assert ("Deployment", "m-main") in h.children()


def test_a_server_error_is_reported_in_the_status_and_retried(h: Harness) -> None:
    h.create(isvc())
    original = h.api.apply

    async def failing(obj: Mapping[str, Any]) -> dict[str, Any]:
        if obj["kind"] == "Deployment":
            raise ApiError(500, "InternalError", 'failed calling webhook "x": connection refused')
        return await original(obj)

    h.api.apply = failing  # type: ignore[method-assign]
    with pytest.raises(ApiError):
        h.reconcile()
    assert h.condition("Ready") == ("False", "ApplyFailed")
    message = next(c for c in h.status()["conditions"] if c["type"] == "Ready")["message"]
    assert message == 'Deployment m-main: failed calling webhook "x": connection refused'
    assert ("Warning", "ApplyFailed") in h.events()


def test_a_spec_the_tenancy_policy_refuses_creates_nothing(h: Harness) -> None:
    obj = isvc()
    obj["spec"]["variants"][0]["model"]["uri"] = "pvc://finance/books.mar"
    h.create(obj)
    writes = h.reconcile()
    assert [w for w in writes if w[0] == "apply"] == [], writes
    assert h.condition("Ready") == ("False", "PolicyRefused")
    assert ("Warning", "PolicyRefused") in h.events()


def test_a_child_of_ours_the_watch_has_not_delivered_is_read_not_created_twice(
    h: Harness,
) -> None:
    converge(h, isvc())
    config = h.api.stored("v1", "ConfigMap", NS, "m-main")
    h.controller.store.remove_child(config)  # as if its watch event were still on the way
    h.controller.queue.add(KEY)
    h.api.calls.clear()
    assert h.reconcile() == [], "found ours and in sync: nothing written"
    assert ("apply-refused", "ConfigMap", "m-main") in h.api.calls
    assert ("get", "ConfigMap", "m-main") in h.api.calls
    assert h.condition("Ready")[1] != "ApplyFailed"
