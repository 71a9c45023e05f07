"""Progressive rollouts end to end on the local control plane.

Real processes throughout: the apiserver (KWOK nodes), a `marfleet operator` serving one
namespace, a `marfleet router` outside the cluster following the InferenceService's published
weights through a watch, and upstream processes behind it. KWOK pods run nothing, so the
variants' traffic goes to those loopback upstreams, and the operator reads the router's
/metrics directly (`--router-metrics-url`). Load runs through the router during the whole
rollout; the InferenceService's status is what the tests observe.

Where a canary's *version* matters (a new version shipped while the old one still answers),
the canary upstream is a real `marfleet serve` holding both versions of the model (archives
from the real torch-model-archiver), and which version answers is switched with the
management API's set-default: what the canary Service's pods do when the new revision's pods
take over, without waiting for a process to start.
"""

from __future__ import annotations

import calendar
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from e2e.bench.procs import free_port
from e2e.bench.router_procs import Client, Proc, metric, router, upstream
from e2e.localcluster import LocalCluster
from e2e.support import wait_for
from tests.integration.test_operator_crd import install_crd
from tests.serving import Server, archive, serve

pytestmark = pytest.mark.slow

GROUP, VERSION, PLURAL = "serving.marfleet.io", "v1alpha1", "inferenceservices"


@dataclass
class Load:
    """Sequential requests through the router from a thread, recording every answer."""

    url: str
    answers: list[tuple[float, int, str, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        client = Client(self.url)
        while not self._stop.is_set():
            status, headers, _ = client.request("POST", "/predictions/m", b'{"x": 1}')
            variant = headers.get("x-marfleet-variant", "")
            version = headers.get("x-marfleet-model-version", "")
            self.answers.append((time.monotonic(), status, variant, version))
            time.sleep(0.004)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def since(self, moment: float) -> Counter[str]:
        return Counter(variant for at, _, variant, _ in self.answers if at >= moment)

    def versions_since(self, moment: float) -> Counter[tuple[str, int]]:
        """(version, status) of the canary's answers from `moment` on."""
        return Counter(
            (version, status)
            for at, status, variant, version in self.answers
            if at >= moment and variant == "canary"
        )


@dataclass
class Rollout:
    api: k8s.ApiClient
    namespace: str
    name: str
    router: Proc | None  # None: a test that needs no router
    canary: Proc | None  # the stand-in canary, when the test did not bring its own
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

    def phase(self) -> str:
        return str((self.status().get("rollout") or {}).get("phase", ""))

    def holding(self) -> str:
        return str(((self.status().get("rollout") or {}).get("holding") or {}).get("reason", ""))

    def patch(self, *operations: dict[str, Any]) -> None:
        k8s.CustomObjectsApi(self.api).patch_namespaced_custom_object(
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            self.name,
            list(operations),
            _content_type="application/json-patch+json",
        )


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
    "analysis": {"maxErrorRatio": 0.05, "maxLatencyP99Ms": 2000, "minRequests": 40},
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
    metrics_url: str = ""  # default: the router's, on router_metrics_port
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
                    self.metrics_url or f"http://127.0.0.1:{self.router_metrics_port}/metrics",
                    "--rollout-interval",
                    "0.5",
                ],
                env={**os.environ, "TMPDIR": str(self.log.parent)},  # what it leaves stays here
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
    cluster: LocalCluster,
    api: k8s.ApiClient,
    workdir: Path,
    *,
    canary_url: str = "",
    metrics_url: str = "",
    with_router: bool = True,
    **spec: Any,
) -> Iterator[Rollout]:
    """An InferenceService, the operator serving its namespace, and a router (with the
    router's own credentials) in front of two upstreams (a stand-in stable, and the stand-in
    canary unless `canary_url` names one); all ended afterwards."""
    namespace = f"ro-{uuid.uuid4().hex[:8]}"
    name = "cart"
    cluster.kubectl("create", "namespace", namespace)
    k8s.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, manifest(name, namespace, **spec)
    )
    operator = Operator(cluster, namespace, workdir / "operator.log", free_port(), metrics_url)
    operator.start()
    try:
        if not with_router:
            yield Rollout(api, namespace, name, None, None, Load(""), Path(), operator)
            return
        credentials = router_kubeconfig(cluster, namespace, name, workdir / "router.kubeconfig")
        watch = ("--isvc", name, "--namespace", namespace, "--kubeconfig", str(credentials))
        with ExitStack() as stack:
            stable = stack.enter_context(upstream("stable"))
            canary = None if canary_url else stack.enter_context(upstream("canary"))
            backends = {"stable": stable.url, "canary": canary_url or cast(Proc, canary).url}
            proc = stack.enter_context(
                router(backends, *watch, metrics_port=operator.router_metrics_port)
            )
            load = Load(proc.url)
            stack.callback(load.stop)
            yield Rollout(api, namespace, name, proc, canary, load, credentials, operator)
    finally:
        operator.stop()
        print(operator.log.read_text(errors="replace")[-3000:])
        cluster.kubectl("delete", "namespace", namespace, "--wait=false")


@pytest.fixture
def rollout(cluster: LocalCluster, api: k8s.ApiClient, tmp_path: Path) -> Iterator[Rollout]:
    with running(cluster, api, tmp_path, rollout=ROLLOUT) as started:
        yield started


def test_a_healthy_canary_is_promoted_through_every_step(rollout: Rollout) -> None:
    # No traffic yet: when the first step's time is up it holds, and says why.
    wait_for(lambda: rollout.holding() == "NotEnoughTraffic", 30, "a hold for lack of traffic")
    holding = rollout.condition("RolloutHolding")
    assert (holding["status"], holding["reason"]) == ("True", "NotEnoughTraffic"), holding
    assert "fewer than 40 canary answers in this step" in holding["message"]
    assert rollout.weights()["canary"] == 20
    # ...and takes the next step as soon as enough answers arrive.
    rollout.load.start()
    seen: list[int] = []

    def succeeded() -> bool:
        weight = rollout.weights().get("canary")
        if weight is not None and (not seen or seen[-1] != weight):
            seen.append(weight)
        return rollout.phase() == "Succeeded"

    # An operator restarted mid-rollout carries on from the same step.
    wait_for(lambda: succeeded() or seen[-1] == 50, 30, "the second step")
    assert rollout.condition("RolloutHolding")["status"] == "False"
    alarms = [e for e in rollout.events() if e[1] == "MetricsUnavailable"]  # router starting
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

    def reasons_now() -> list[str]:
        return [reason for _, reason, _ in rollout.events()]

    # Events are recorded right after the status they tell of.
    wait_for(lambda: "RolloutSucceeded" in reasons_now(), 5, "the RolloutSucceeded Event")
    reasons = reasons_now()
    for reason, count in {
        "RolloutStarted": 1,
        "RolloutStepStarted": 1,
        "RolloutStepAdvanced": 2,
        "RolloutSucceeded": 1,
    }.items():
        assert Counter(reasons)[reason] == count, reasons
    # Holds (a step's answers came slowly, or the restarted operator's new reading began the
    # window again) are Normal; a restart raises no false alarm about the metrics.
    assert [e for e in rollout.events() if e[1] == "MetricsUnavailable"] == alarms
    # The router followed within seconds, and the weight changes failed no request.
    moment = time.monotonic() + 2
    wait_for(lambda: sum(rollout.load.since(moment).values()) >= 100, 30, "more traffic")
    assert set(rollout.load.since(moment)) == {"canary"}

    # Removing spec.rollout: the spec's weights are in force again, as documented, and the
    # status no longer claims a rollout.
    rollout.patch({"op": "remove", "path": "/spec/rollout"})
    wait_for(lambda: "rollout" not in rollout.status(), 10, "status.rollout to go")
    wait_for(lambda: rollout.weights() == {"stable": 100, "canary": 0}, 10, "the spec's weights")
    kinds = {c["type"] for c in rollout.status()["conditions"]}
    assert not kinds & {"RolloutProgressing", "RolloutAborted", "RolloutHolding"}, kinds

    def removed() -> list[tuple[str, str]]:
        return [(t, m) for t, reason, m in rollout.events() if reason == "RolloutRemoved"]

    wait_for(lambda: bool(removed()), 5, "the RolloutRemoved Event")
    assert removed()[0][0] == "Warning", removed()
    assert "the spec's weights are in force (stable=100, canary=0)" in removed()[0][1]
    moment = time.monotonic() + 2
    wait_for(lambda: sum(rollout.load.since(moment).values()) >= 100, 30, "traffic after")
    assert set(rollout.load.since(moment)) == {"stable"}
    rollout.load.stop()
    failed = [answer for answer in rollout.load.answers if answer[1] != 200]
    assert not failed, failed[:5]


def test_a_canary_whose_handler_starts_failing_is_rolled_back(rollout: Rollout) -> None:
    rollout.load.start()
    wait_for(lambda: rollout.weights().get("canary") == 20, 30, "the first step")
    # Inject the failure: from now on the canary's handler answers 500.
    assert rollout.canary is not None
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
    # (the step's window may hold a few answers from before the failure began)
    ratio = re.search(r"error ratio (\d\.\d{4}) > 0.05", aborted["message"])
    assert ratio is not None and float(ratio.group(1)) >= 0.9, aborted
    wait_for(lambda: rollout.weights() == {"stable": 100, "canary": 0}, 10, "weights 100/0")
    warnings = wait_for(
        lambda: [(t, m) for t, reason, m in rollout.events() if reason == "RolloutAborted"],
        10,
        "the abort's event",
    )
    assert warnings and warnings[0][0] == "Warning" and "error ratio" in warnings[0][1]
    # The router stops sending the canary anything.
    moment = time.monotonic() + 2
    wait_for(lambda: sum(rollout.load.since(moment).values()) >= 100, 30, "more traffic")
    assert set(rollout.load.since(moment)) == {"stable"}
    print(yaml.safe_dump(rollout.status().get("rollout")))


HANDLER = Path(__file__).parent / "server_handlers" / "versioned.py"
BAD, FIXED = "6.0-bad", "7.0"
"""The canary's two versions: 6.0-bad fails every third request, 7.0 answers them all."""


@dataclass
class Versions:
    """One `marfleet serve` holding both canary versions; `answer_with` picks the one that
    answers (set-default), as the canary Service's pods would when a revision takes over. It
    starts in the background (its workers take a while), on a port known at once, so a test
    can set up its cluster side meanwhile; `answer_with` waits for it."""

    inference: str
    starting: Future[Server]

    def answer_with(self, version: str) -> None:
        server = self.starting.result(timeout=180)
        reply = httpx.put(
            f"{server.management}/models/m/{version}/set-default", headers=server.auth
        )
        assert reply.status_code == 200, reply.text


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Versions]:
    root = tmp_path_factory.mktemp("versions")
    store = root / "store"
    store.mkdir()
    for version in (BAD, FIXED):
        (root / version).mkdir()
        built = archive(root / version, "m", HANDLER, version=version)
        shutil.move(built, store / f"m-{version}.mar")
    port = free_port()
    properties = {"default_workers_per_model": "1", "enable_model_api": "true"}
    running_server = serve(
        store, root / "run", models=["all"], properties=properties, inference_port=port
    )
    with ThreadPoolExecutor(1) as pool:
        starting = pool.submit(running_server.__enter__)
        try:
            yield Versions(f"http://127.0.0.1:{port}", starting)
        finally:
            starting.result(timeout=180).kill()  # nothing is in flight any more: no drain
            running_server.__exit__(None, None, None)


def fast_rollout(**analysis: Any) -> dict[str, Any]:
    return {
        "steps": [50, 100],
        "stepSeconds": 2,
        "analysis": {"maxErrorRatio": 0.05, "minRequests": 30, **analysis},
    }


def with_versions(
    cluster: LocalCluster,
    api: k8s.ApiClient,
    workdir: Path,
    versions: Versions,
    canary_version: str,
    **spec: Any,
) -> AbstractContextManager[Rollout]:
    """`running` with the real server as the canary, whose spec names `canary_version`."""
    variants = manifest("x", "x")["spec"]["variants"]
    variants[1]["model"]["version"] = canary_version
    return running(
        cluster,
        api,
        workdir,
        canary_url=versions.inference,
        variants=variants,
        rollout=fast_rollout(),
        **spec,
    )


def with_canary_version(version: str) -> dict[str, Any]:
    return {"op": "replace", "path": "/spec/variants/1/model/version", "value": version}


def test_each_version_is_judged_on_its_own_answers_whichever_pods_still_answer(
    cluster: LocalCluster, api: k8s.ApiClient, tmp_path: Path, versions: Versions
) -> None:
    """The story of a bad release and its fix. 6.0-bad starts slowly while 7.0 still answers:
    it is not promoted on 7.0's answers, and is rolled back on its own. Then the fix, 7.0
    again, is shipped while 6.0-bad still answers: it is not aborted on 6.0-bad's errors, and
    is promoted once its own answers come."""
    unschedulable = {"requests": {"cpu": "100000"}}
    with with_versions(cluster, api, tmp_path, versions, BAD, resources=unschedulable) as rollout:
        rollout.load.start()
        # Its pods cannot start: the first step waits, the canary at 0 %.
        wait_for(lambda: rollout.holding() == "WaitingForCanary", 30, "a wait for its pods")
        time.sleep(2.5)  # longer than a step
        assert rollout.condition("RolloutProgressing")["reason"] == "WaitingForCanary"
        assert "stepStartedAt" not in rollout.status()["rollout"]
        assert rollout.weights()["canary"] == 0
        assert rollout.load.versions_since(0) == Counter()  # the canary got nothing
        versions.answer_with(FIXED)  # the version that serves while the new one starts
        # Its pods are scheduled, but the old version still answers: no promotion on that.
        rollout.patch({"op": "remove", "path": "/spec/resources"})
        started = time.monotonic()
        wait_for(lambda: rollout.holding() == "NotEnoughTraffic", 30, "a hold for its own answers")
        assert rollout.load.versions_since(started)[FIXED, 200] >= 10  # there to be misused
        assert rollout.phase() == "Progressing" and rollout.status()["rollout"]["step"] == 0
        message = rollout.condition("RolloutHolding")["message"]
        assert (
            "(0 when the hold began)" in message
            and f"answers of other versions ({FIXED}: " in message
        )
        # The new version answers at last, and is rolled back on its own errors.
        versions.answer_with(BAD)
        wait_for(lambda: rollout.phase() == "Aborted", 30, f"{BAD} to be aborted")
        assert "error ratio" in rollout.condition("RolloutAborted")["message"]
        wait_for(lambda: rollout.weights()["canary"] == 0, 10, "the canary back at 0 %")

        # Ship the fix while the bad version's pods still answer every canary request.
        rollout.patch(with_canary_version(FIXED))
        shipped = time.monotonic()
        wait_for(lambda: rollout.holding() == "NotEnoughTraffic", 30, "a hold for its own answers")
        old_answers = rollout.load.versions_since(shipped)
        assert old_answers[BAD, 500] >= 10, old_answers  # the old version's errors were there
        assert rollout.phase() == "Progressing" and rollout.weights()["canary"] == 50
        # Its own pods take over: judged on their answers, it is promoted.
        versions.answer_with(FIXED)
        wait_for(lambda: rollout.phase() == "Succeeded", 30, f"{FIXED} to be promoted")
        # (each event is recorded just after the status write that it reports)
        advanced = wait_for(
            lambda: [m for _, reason, m in rollout.events() if reason == "RolloutStepAdvanced"],
            10,
            "the step's event",
        )
        assert all("error ratio 0.0000" in m for m in advanced), advanced


def test_unreadable_metrics_are_loud_at_once_and_can_abort(
    cluster: LocalCluster, api: k8s.ApiClient, tmp_path: Path
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/metrics"  # nothing listens there
    spec = fast_rollout()
    spec["abortAfterMetricsUnavailableSeconds"] = 3
    with running(
        cluster, api, tmp_path, metrics_url=nowhere, with_router=False, rollout=spec
    ) as rollout:
        wait_for(lambda: rollout.holding() == "MetricsUnavailable", 30, "MetricsUnavailable")
        state = rollout.status()["rollout"]
        since, started = (_epoch(state["holding"]["since"]), _epoch(state["stepStartedAt"]))
        # The first reading after the step began (interval 0.5 s; the stamps have whole
        # seconds, and a loaded CI machine delays the operator's ticks).
        assert since - started <= 3, state
        holding = rollout.condition("RolloutHolding")
        assert (holding["status"], holding["reason"]) == ("True", "MetricsUnavailable")
        assert "reading router metrics at" in holding["message"], holding

        def warnings() -> list[str]:
            return [
                m for t, r, m in rollout.events() if (t, r) == ("Warning", "MetricsUnavailable")
            ]

        wait_for(lambda: bool(warnings()), 5, "the Warning Event")  # written after the status
        assert "reading router metrics at" in warnings()[0], warnings()
        text = rollout.operator.log.read_text()
        lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        logged = [
            line
            for line in lines
            if line.get("level") == "warning" and line.get("reason") == "MetricsUnavailable"
        ]
        assert logged and "reading router metrics at" in logged[0]["detail"], lines[-5:]
        # abortAfterMetricsUnavailableSeconds: 3
        wait_for(lambda: rollout.phase() == "Aborted", 15, "the abort without metrics")
        assert "no metrics for" in rollout.condition("RolloutAborted")["message"]


def _epoch(text: str) -> float:
    return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))


def router_weight(rollout: Rollout, variant: str) -> float:
    assert rollout.router is not None
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
    before = Counter(v for at, _, v, _ in plain.load.answers if at < changed_at)
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
