"""Progressive rollouts end to end on the local control plane.

Real processes throughout: the apiserver (KWOK nodes), a `marfleet operator` serving one
namespace, a `marfleet router` outside the cluster following the InferenceService's published
weights through a watch, and two upstream processes behind it. KWOK pods run nothing, so the
variants' traffic goes to those loopback upstreams, and the operator reads the router's
/metrics directly (`--router-metrics-url`). Load runs through the router during the whole
rollout; the InferenceService's status is what the tests observe.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from e2e.bench.procs import free_port
from e2e.bench.router_procs import Client, Proc, metric, router, upstream
from e2e.localcluster import LocalCluster
from e2e.support import wait_for
from tests.integration.test_operator_crd import install_crd

pytestmark = pytest.mark.slow

GROUP, VERSION, PLURAL = "serving.marfleet.io", "v1alpha1", "inferenceservices"


@dataclass
class Load:
    """Sequential requests through the router from a thread, recording every answer."""

    url: str
    answers: list[tuple[float, int, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        client = Client(self.url)
        while not self._stop.is_set():
            status, headers, _ = client.request("POST", "/predictions/m", b'{"x": 1}')
            self.answers.append((time.monotonic(), status, headers.get("x-marfleet-variant", "")))
            time.sleep(0.004)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def since(self, moment: float) -> Counter[str]:
        return Counter(variant for at, _, variant in self.answers if at >= moment)


@dataclass
class Rollout:
    api: k8s.ApiClient
    namespace: str
    name: str
    router: Proc
    canary: Proc
    load: Load
    router_credentials: Path
    operator: Operator

    def isvc(self) -> dict[str, Any]:
        obj = k8s.CustomObjectsApi(self.api).get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, self.name
        )
        return cast(dict[str, Any], obj)

    def status(self) -> dict[str, Any]:
        return self.isvc().get("status") or {}

    def weights(self) -> dict[str, int]:
        return {v["name"]: v.get("weight", -1) for v in self.status().get("variants") or []}

    def condition(self, kind: str) -> dict[str, Any]:
        return next((c for c in self.status().get("conditions") or [] if c["type"] == kind), {})

    def events(self) -> list[tuple[str, str, str]]:
        listing = k8s.CoreV1Api(self.api).list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={self.name}"
        )
        return [(str(e.type), str(e.reason), str(e.message)) for e in listing.items]


def manifest(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "variants": [
                {"name": "stable", "weight": 100, "model": {"uri": "https://m.example/a.mar"}},
                {
                    "name": "canary",
                    "weight": 0,
                    "model": {"uri": "https://m.example/b.mar", "version": "2.0"},
                },
            ],
            "autoscaling": {"engine": "none"},
            **spec,
        },
    }


ROLLOUT = {
    "steps": [20, 50, 100],
    "stepSeconds": 3,
    "analysis": {"maxErrorRatio": 0.05, "maxLatencyP99Ms": 2000},
}


@pytest.fixture(scope="module")
def api(cluster: LocalCluster) -> k8s.ApiClient:
    install_crd(cluster)
    return k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig))


def router_kubeconfig(cluster: LocalCluster, namespace: str, name: str, path: Path) -> Path:
    """A kubeconfig holding only the token of the ServiceAccount the operator made for the
    router (bound to its read-only Role): the credential a router pod has."""
    account = f"{name}-router"
    wait_for(
        lambda: (
            cluster.kubectl(
                "get", "serviceaccount", account, "-n", namespace, check=False
            ).returncode
            == 0
        ),
        30,
        f"ServiceAccount {account}",
    )
    token = cluster.kubectl("create", "token", account, "-n", namespace).stdout.strip()
    config = json.loads(cluster.kubeconfig.read_text())
    config["users"] = [{"name": account, "user": {"token": token}}]
    config["contexts"][0]["context"]["user"] = account
    path.write_text(json.dumps(config))
    return path


@dataclass
class Operator:
    """`marfleet operator` serving one namespace, reading the router's metrics directly."""

    cluster: LocalCluster
    namespace: str
    log: Path
    router_metrics_port: int
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "marfleet.runtime.cli",
                    "operator",
                    "--kubeconfig",
                    str(self.cluster.kubeconfig),
                    "--namespace",
                    self.namespace,
                    "--no-leader-election",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(free_port()),
                    "--router-metrics-url",
                    f"http://127.0.0.1:{self.router_metrics_port}/metrics",
                    "--rollout-interval",
                    "0.5",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextmanager
def running(
    cluster: LocalCluster, api: k8s.ApiClient, workdir: Path, **spec: Any
) -> Iterator[Rollout]:
    """An InferenceService, the operator serving its namespace, and a router (with the
    router's own credentials) in front of two upstream processes; all ended afterwards."""
    namespace = f"ro-{uuid.uuid4().hex[:8]}"
    name = "cart"
    cluster.kubectl("create", "namespace", namespace)
    k8s.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, manifest(name, namespace, **spec)
    )
    operator = Operator(cluster, namespace, workdir / "operator.log", free_port())
    operator.start()
    try:
        credentials = router_kubeconfig(cluster, namespace, name, workdir / "router.kubeconfig")
        watch = ("--isvc", name, "--namespace", namespace, "--kubeconfig", str(credentials))
        with upstream("stable") as stable, upstream("canary") as canary:
            backends = {"stable": stable.url, "canary": canary.url}
            with router(backends, *watch, metrics_port=operator.router_metrics_port) as proc:
                load = Load(proc.url)
                try:
                    yield Rollout(api, namespace, name, proc, canary, load, credentials, operator)
                finally:
                    load.stop()
    finally:
        operator.stop()
        print(operator.log.read_text(errors="replace")[-3000:])
        cluster.kubectl("delete", "namespace", namespace, "--wait=false")


@pytest.fixture
def rollout(cluster: LocalCluster, api: k8s.ApiClient, tmp_path: Path) -> Iterator[Rollout]:
    with running(cluster, api, tmp_path, rollout=ROLLOUT) as started:
        yield started


def test_a_healthy_canary_is_promoted_through_every_step(rollout: Rollout) -> None:
    rollout.load.start()
    seen: list[int] = []

    def succeeded() -> bool:
        weight = rollout.weights().get("canary")
        if weight is not None and (not seen or seen[-1] != weight):
            seen.append(weight)
        return (rollout.status().get("rollout") or {}).get("phase") == "Succeeded"

    # An operator restarted mid-rollout carries on from the same step.
    wait_for(lambda: succeeded() or seen[-1] == 50, 30, "the second step")
    rollout.operator.stop()
    time.sleep(1)
    rollout.operator.start()
    wait_for(succeeded, 60, "the rollout to succeed")
    assert [w for w in seen if w > 0] == [20, 50, 100], seen
    wait_for(lambda: rollout.weights() == {"stable": 0, "canary": 100}, 10, "weights 0/100")
    assert rollout.condition("RolloutProgressing")["status"] == "False"
    assert rollout.condition("RolloutProgressing")["reason"] == "Succeeded"
    assert rollout.condition("RolloutAborted")["status"] == "False"
    # The spec keeps the user's intent: only the status says what is in force.
    assert [v["weight"] for v in rollout.isvc()["spec"]["variants"]] == [100, 0]
    reasons = [reason for _, reason, _ in rollout.events()]
    assert Counter(reasons)["RolloutStarted"] == 1, reasons
    assert Counter(reasons)["RolloutStepAdvanced"] == 2, reasons
    assert Counter(reasons)["RolloutSucceeded"] == 1, reasons
    # The router followed within seconds, and the weight changes failed no request.
    moment = time.monotonic() + 2
    wait_for(lambda: sum(rollout.load.since(moment).values()) >= 100, 30, "more traffic")
    assert set(rollout.load.since(moment)) == {"canary"}
    rollout.load.stop()
    failed = [answer for answer in rollout.load.answers if answer[1] != 200]
    assert not failed, failed[:5]


def test_a_canary_whose_handler_starts_failing_is_rolled_back(rollout: Rollout) -> None:
    rollout.load.start()
    wait_for(lambda: rollout.weights().get("canary") == 20, 30, "the first step")
    # Inject the failure: from now on the canary's handler answers 500.
    urllib.request.urlopen(
        urllib.request.Request(f"{rollout.canary.url}/admin/fail?status=500", method="POST")
    ).close()
    wait_for(
        lambda: (rollout.status().get("rollout") or {}).get("phase") == "Aborted",
        30,
        "the rollout to abort",
    )
    aborted = rollout.condition("RolloutAborted")
    assert aborted["status"] == "True" and aborted["reason"] == "AnalysisFailed"
    assert "error ratio 1.0000 > 0.05" in aborted["message"], aborted
    wait_for(lambda: rollout.weights() == {"stable": 100, "canary": 0}, 10, "weights 100/0")
    warnings = [(t, m) for t, reason, m in rollout.events() if reason == "RolloutAborted"]
    assert warnings and warnings[0][0] == "Warning" and "error ratio" in warnings[0][1]
    # The router stops sending the canary anything.
    moment = time.monotonic() + 2
    wait_for(lambda: sum(rollout.load.since(moment).values()) >= 100, 30, "more traffic")
    assert set(rollout.load.since(moment)) == {"stable"}
    print(yaml.safe_dump(rollout.status().get("rollout")))


def router_weight(rollout: Rollout, variant: str) -> float:
    with urllib.request.urlopen(rollout.router.metrics_url, timeout=5) as response:
        return metric(response.read().decode(), "marfleet_router_weight", variant=variant)


def test_weights_edited_in_spec_reach_the_router_within_seconds_without_a_failed_request(
    cluster: LocalCluster, api: k8s.ApiClient, tmp_path: Path
) -> None:
    spec_weights = [{"op": "replace", "path": "/spec/variants/0/weight", "value": 90}]
    spec_weights.append({"op": "replace", "path": "/spec/variants/1/weight", "value": 10})
    with running(cluster, api, tmp_path) as plain:
        patch = ("--type=json", f"-p={json.dumps(spec_weights)}")
        cluster.kubectl("patch", "mfisvc", plain.name, "-n", plain.namespace, *patch)
        wait_for(lambda: router_weight(plain, "canary") == 10, 10, "weights 90/10 in the router")
        plain.load.start()
        wait_for(lambda: len(plain.load.answers) >= 500, 30, "load")
        to_even = [{**op, "value": 50} for op in spec_weights]
        changed_at = time.monotonic()
        cluster.kubectl(
            "patch",
            "mfisvc",
            plain.name,
            "-n",
            plain.namespace,
            "--type=json",
            f"-p={json.dumps(to_even)}",
        )
        wait_for(lambda: router_weight(plain, "canary") == 50, 10, "weights 50/50 in the router")
        applied_after = time.monotonic() - changed_at
        settled = time.monotonic()
        wait_for(lambda: sum(plain.load.since(settled).values()) >= 400, 30, "load at 50/50")
        plain.load.stop()
        # The router holds no rights beyond reading its own InferenceService.
        kubectl = ("--kubeconfig", str(plain.router_credentials), "-n", plain.namespace)
        assert (
            cluster.kubectl(
                "auth", "can-i", "watch", f"mfisvc/{plain.name}", *kubectl, check=False
            ).stdout.strip()
            == "yes"
        )
        for verb, what in (
            ("patch", f"mfisvc/{plain.name}"),
            ("list", "pods"),
            ("get", "mfisvc/other"),
        ):
            assert (
                cluster.kubectl("auth", "can-i", verb, what, *kubectl, check=False).stdout.strip()
                == "no"
            )
    print(f"weights applied by the router {applied_after:.2f} s after the edit")
    assert applied_after < 5
    before = Counter(v for at, _, v in plain.load.answers if at < changed_at)
    assert abs(before["canary"] / sum(before.values()) - 0.10) <= 0.02, before
    after = plain.load.since(settled)
    assert abs(after["canary"] / sum(after.values()) - 0.50) <= 0.02, after
    assert [a for a in plain.load.answers if a[1] != 200] == []


def test_the_apiserver_refuses_a_mirror_to_an_unknown_variant(
    cluster: LocalCluster, api: k8s.ApiClient
) -> None:
    bad = manifest("cart", "default", routing={"mirror": {"variant": "ghost", "percent": 5}})
    result = cluster.kubectl(
        "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(bad), check=False
    )
    assert result.returncode != 0
    assert "routing.mirror.variant must be the name of one of spec.variants" in result.stderr
    good = manifest(
        "cart", "default", routing={"stickyHeader": "x-user-id", "mirror": {"variant": "canary"}}
    )
    applied = cluster.kubectl(
        "apply", "--dry-run=server", "-o", "json", "-f", "-", input=yaml.safe_dump(good)
    )
    assert json.loads(applied.stdout)["spec"]["routing"]["mirror"] == {
        "variant": "canary",
        "percent": 100,
    }
