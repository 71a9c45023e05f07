"""The real-node scenario: marfleet's own images serving real requests in the local cluster.

What a team does with marfleet, end to end, with nothing simulated on the serving path: the
chart installs the operator, which runs in-cluster from its image; an InferenceService points
at an archive that TorchServe's `torch-model-archiver` built and a host serves over HTTP; the
init container fetches it and runtime pods answer predictions through the stable Service.
Then real load: Prometheus scrapes the pods, prometheus-adapter serves the HPA its metric, and
the HPA scales the variant up and, once the load stops, back down. Under that load a runtime
pod is deleted and a new model version is rolled in at 90/10 behind the router. While the HPA
scales down, a second InferenceService serves TorchServe's MNIST example (`examples/mnist`: an
`ImageClassifier` subclass with a 1-channel transform) from the same runtime image, which has
no TorchServe, and its answer to a grayscale PNG is compared with real TorchServe's (0.12, from
the dev environment, on loopback) for the same archive and picture.

Each step judges what it saw and raises ScenarioError with the evidence when something is
wrong, so `python -m e2e.scenario` and the slow test enforce the same things. The KWOK nodes
are tainted for the run, so every pod lands on the real node.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from marfleet.operator import labels
from marfleet.operator.render import PORTS

from e2e.bench import servers
from e2e.demo import kube
from e2e.demo.console import Check, Console, Probe
from e2e.demo.console import DemoError as ScenarioError
from e2e.images import marfleet as marfleet_images
from e2e.images.oci import Image, import_into
from e2e.localcluster import LocalCluster, realnode
from e2e.localcluster.nodenet import netns_name
from e2e.objectstores import ACCESS_KEY, SECRET_KEY, VersityS3
from e2e.prometheus import chart
from e2e.prometheus.adapter import CustomMetrics

from . import archives
from .load import Load, Summary, probe

NAMESPACE = "shop"
ISVC = "classifier"
DIGITS = "digits"
"""The InferenceService of TorchServe's MNIST example (a fixed single replica, no HPA)."""
RELEASE = "marfleet"
BUCKET = "models"
STORE_SECRET = "model-store"
"""The Secret with the S3 keys version 1.0 is fetched with (allowed by the chart's tenancy)."""
CHART_NAMESPACE = "marfleet-system"
SIMULATED_TAINT = "marfleet.io/simulated=true:NoSchedule"
TARGET_PER_REPLICA = 4  # requests per second one replica should carry
MAX_REPLICAS = 3
LOAD_RATE = 16.0  # requests per second: the HPA wants ceil(16 / 4) = 4, capped at 3
SCALE_DOWN_SECONDS = 20
SETTLE_SECONDS = 20  # load observed after each change before judging it
STEPS = 11
AUTOSCALING = {
    "minReplicas": 1,
    "maxReplicas": MAX_REPLICAS,
    "metric": "requestsPerSecond",
    "targetPerReplica": TARGET_PER_REPLICA,
    "scaleDownStabilizationSeconds": SCALE_DOWN_SECONDS,
}
# Run in the MNIST pod: is TorchServe there, and where does a handler's `import ts` lead?
WHICH_TS = """
import importlib.util, json
from marfleet.runtime import ts_compat
installed = importlib.util.find_spec("ts") is not None
ts_compat.install()
import ts
print(json.dumps({"torchserve_installed": installed, "ts": ts.__path__[0]}))
"""


@dataclass
class Settings:
    cluster: str = "scenario"
    workdir: Path = Path("/tmp/marfleet-scenario")
    timeout: float = 300.0
    keep: bool = False  # leave the cluster up afterwards (for looking around)


@dataclass
class Report:
    """What the scenario measured: durations of its steps and the load's outcome per phase."""

    seconds: dict[str, float] = field(default_factory=dict)
    load: dict[str, Summary] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)


def inference_service(
    variants: list[dict[str, Any]],
    name: str = ISVC,
    autoscaling: Mapping[str, Any] = AUTOSCALING,
) -> dict[str, Any]:
    return {
        "apiVersion": "serving.marfleet.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "variants": variants,
            "runtime": {
                "workersPerDevice": 1,
                "batching": {"maxBatchSize": 4, "maxBatchDelayMs": 5},
            },
            "resources": {
                "requests": {"cpu": "100m", "memory": "256Mi"},
                "limits": {"memory": "1Gi"},
            },
            "autoscaling": dict(autoscaling),
        },
    }


def deployment_of(variant: str, isvc: str = ISVC) -> str:
    """The Deployment (and HPA) the operator names after a variant."""
    return f"{isvc}-{variant}"


def variant(
    name: str,
    version: str,
    uri: str,
    weight: int,
    storage: Mapping[str, Any] | None = None,
    model_name: str = archives.MODEL,
) -> dict[str, Any]:
    model: dict[str, Any] = {"uri": uri, "name": model_name, "version": version}
    if storage:
        model["storage"] = dict(storage)
    return {"name": name, "weight": weight, "model": model}


class Scenario:
    def __init__(
        self, settings: Settings, console: Console, cluster: LocalCluster | None = None
    ) -> None:
        """cluster: a real-node cluster that is up already (the test suite's shared one) to
        run on instead of a new one named `settings.cluster`; it is left up afterwards."""
        self.settings = settings
        self.out = console
        self.own_cluster = cluster is None
        self.cluster = cluster or LocalCluster(settings.cluster, real_node=True)
        self.report = Report()
        self.images: dict[str, Image] = {}
        self.metrics: CustomMetrics | None = None
        self.server: archives.ArchiveServer | None = None
        self.store: VersityS3 | None = None
        self.load: Load | None = None
        self.urls: dict[str, str] = {}
        self.service_ip = ""
        self.load_stopped = 0.0  # time.monotonic() when the load stopped

    # ----- the whole story -----
    def run(self) -> Report:
        started = time.monotonic()
        try:
            for title, step in (
                ("marfleet's images, built from Debian packages", self._images),
                ("a local cluster with a real node; the images imported", self._cluster),
                ("Prometheus and prometheus-adapter for the HPA", self._metrics),
                ("install the chart: the operator runs in-cluster", self._chart),
                (
                    "model archives by torch-model-archiver: 1.0 in S3, 2.0 over HTTP",
                    self._archives,
                ),
                ("apply an InferenceService; real pods fetch the model and serve", self._apply),
                ("load: the HPA scales the variant up", self._scale_up),
                ("delete a runtime pod under load", self._delete_pod),
                ("roll in version 2.0 at 90/10 under load", self._roll),
                (
                    "stop the load; TorchServe's MNIST example on a grayscale digit: "
                    "marfleet's image vs TorchServe",
                    self._grayscale,
                ),
                ("the HPA scales back down; delete everything", self._wind_down),
            ):
                self._timed(title, step)
        finally:
            self._stop_helpers()
            if self.own_cluster and not self.settings.keep:
                self.cluster.down()
        self.report.seconds["total"] = time.monotonic() - started
        return self.report

    def _timed(self, title: str, step: Callable[[], None]) -> None:
        self.out.step(title)
        started = time.monotonic()
        step()
        self.report.seconds[step.__name__.strip("_")] = elapsed = time.monotonic() - started
        self.out.line(f"({elapsed:.1f} s)")

    # ----- steps -----
    def _images(self) -> None:
        for name, build in (
            ("runtime", marfleet_images.runtime),
            ("operator", marfleet_images.operator),
        ):
            began = time.monotonic()
            self.images[name] = image = build()
            size = image.archive.stat().st_size / 2**20
            self.out.line(
                f"{image.ref}: {size:.0f} MiB, built or found in {time.monotonic() - began:.1f} s"
            )

    def _cluster(self) -> None:
        if self.own_cluster:
            self.cluster.down()
            self.cluster.up()
        self.cluster.kubectl("taint", "nodes", "-l", "type=kwok", SIMULATED_TAINT, "--overwrite")
        self.out.line(f"KUBECONFIG={self.cluster.kubeconfig}")
        self.out.block(self.cluster.kubectl("get", "nodes", "-o", "wide").stdout)
        socket = realnode.containerd_socket(self.cluster.dir / "node")
        for image in self.images.values():
            began = time.monotonic()
            import_into(image, socket)
            self.out.line(f"imported {image.ref} in {time.monotonic() - began:.1f} s")

    def _metrics(self) -> None:
        self.metrics = CustomMetrics(self.cluster, self.settings.workdir / "metrics")
        self.metrics.start()
        self.out.line(
            f"Prometheus {self.metrics.prometheus.url if self.metrics.prometheus else ''}"
        )
        self.out.line("APIService v1beta1.custom.metrics.k8s.io: Available")

    def _chart(self) -> None:
        operator, runtime = self.images["operator"], self.images["runtime"]
        values = {
            "operator.replicas": "1",
            "operator.image.repository": operator.ref.rsplit(":", 1)[0],
            "operator.image.tag": operator.key,
            "operator.image.pullPolicy": "Never",
            "runtime.image.repository": runtime.ref.rsplit(":", 1)[0],
            "runtime.image.tag": runtime.key,
            "router.image.repository": operator.ref.rsplit(":", 1)[0],
            "router.image.tag": operator.key,
            "tenancy.secrets[0]": f"{NAMESPACE}/{STORE_SECRET}",
        }
        args = [
            *("upgrade", "--install", RELEASE, str(chart.CHART_DIR)),
            *("--namespace", CHART_NAMESPACE, "--create-namespace", "--wait", "--timeout", "180s"),
            *(f"--set={key}={value}" for key, value in values.items()),
        ]
        self.out.command(["helm", *args])
        chart.helm(*args, "--kubeconfig", str(self.cluster.kubeconfig), env=self.cluster.env())
        selector = {labels.INSTANCE: RELEASE, labels.COMPONENT: "operator"}

        def leading() -> Probe:
            lease = kube.get_json(self.cluster, "lease", "marfleet-operator", "-n", CHART_NAMESPACE)
            holder = lease["spec"].get("holderIdentity", "")
            return Probe(bool(holder), f"Lease held by {holder or 'nobody'}")

        self.out.wait([Check("operator elected leader", leading)], self.settings.timeout)
        pod = kube.running_pods(self.cluster, CHART_NAMESPACE, selector)[0]
        self.out.line(f"operator pod {pod['metadata']['name']} on {pod['spec']['nodeName']}")

    def _archives(self) -> None:
        directory = self.settings.workdir / "models"
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        built = {
            version: archives.build(directory, version, seed)
            for version, seed in (("1.0", 1), ("2.0", 2))
        }
        self.server = archives.ArchiveServer(directory, self.cluster.state.host)
        self.server.start()
        for version, path in built.items():
            self.urls[version] = f"{self.server.base_url}/{path.name}"
        # 1.0 comes from an S3 store (versitygw on the host) with keys from a Secret.
        self.store = VersityS3(self.settings.workdir / "s3", host=self.cluster.state.host)
        self.store.start()
        self.store.put(BUCKET, {built["1.0"].name: built["1.0"]})
        self.urls["1.0"] = f"s3://{BUCKET}/{built['1.0'].name}"
        for version, path in built.items():
            self.out.line(f"{version}: {self.urls[version]} ({path.stat().st_size} bytes)")
        self.out.line(f"S3 endpoint {self.store.endpoint}, keys in Secret {STORE_SECRET}")

    def _apply(self) -> None:
        assert self.store is not None
        self.cluster.kubectl("create", "namespace", NAMESPACE)
        self.cluster.kubectl(
            "create", "secret", "generic", STORE_SECRET, "-n", NAMESPACE,
            f"--from-literal=AWS_ACCESS_KEY_ID={ACCESS_KEY}",
            f"--from-literal=AWS_SECRET_ACCESS_KEY={SECRET_KEY}",
        )  # fmt: skip
        isvc = inference_service([variant("stable", "1.0", self.urls["1.0"], 100, self._s3())])
        self.out.line(kube.apply(self.cluster, [isvc]).strip())
        self.out.wait([Check(f"InferenceService {ISVC} Ready", self._ready)], self.settings.timeout)
        self.out.block(
            self.cluster.kubectl("get", "pods,svc,hpa", "-n", NAMESPACE, "-o", "wide").stdout
        )
        service = kube.get_json(self.cluster, "service", ISVC, "-n", NAMESPACE)
        self.service_ip = service["spec"]["clusterIP"]
        url = f"http://{self.service_ip}/predictions/{archives.MODEL}"
        self.load = Load(
            netns_name(self.cluster.name), url, LOAD_RATE, self.settings.workdir / "load.jsonl"
        )
        self.load.record.path.unlink(missing_ok=True)
        self.out.line(f"stable Service {ISVC}: {url} (reached from the node's network namespace)")

        def answers() -> Probe:
            outcome = probe(netns_name(self.cluster.name), url)
            return Probe(outcome.ok, outcome.error or f"model version {outcome.version}")

        # Ready in the API runs a moment ahead of kube-proxy's rules for the new endpoint.
        self.out.wait([Check("a prediction through the Service", answers)], self.settings.timeout)

    def _scale_up(self) -> None:
        assert self.load is not None
        began = time.time()
        self.load.start()
        self.out.line(f"{LOAD_RATE:.0f} requests/s, {TARGET_PER_REPLICA} per replica wanted")
        deployment = deployment_of("stable")
        self.out.wait(
            [
                Check(
                    f"{deployment} at {MAX_REPLICAS} ready replicas",
                    lambda: self._scaled(deployment, MAX_REPLICAS, at_least=True),
                )
            ],
            self.settings.timeout,
        )
        scaled = kube.get_json(self.cluster, "deployment", deployment, "-n", NAMESPACE)
        self.report.facts["ready_replicas_under_load"] = scaled["status"]["readyReplicas"]
        self.out.line(f"HPA: {self._hpa(deployment)}")
        self._judge("scale_up", began, zero_failures=True)

    def _delete_pod(self) -> None:
        assert self.load is not None
        deployment = deployment_of("stable")
        pods = kube.running_pods(
            self.cluster, NAMESPACE, {labels.ISVC: ISVC, labels.VARIANT: "stable"}
        )
        victim = pods[-1]["metadata"]["name"]
        began = time.time()
        self.out.command(["kubectl", "delete", "pod", victim, "-n", NAMESPACE])
        self.cluster.kubectl("delete", "pod", victim, "-n", NAMESPACE, "--wait=false")

        def replaced() -> Probe:
            current = kube.running_pods(
                self.cluster, NAMESPACE, {labels.ISVC: ISVC, labels.VARIANT: "stable"}
            )
            names = {p["metadata"]["name"] for p in current if _pod_ready(p)}
            return Probe(
                victim not in names and len(names) >= MAX_REPLICAS, f"ready: {sorted(names)}"
            )

        self.out.wait([Check(f"{victim} replaced", replaced)], self.settings.timeout)
        time.sleep(5)
        self._judge("delete_pod", began, zero_failures=True)
        self.report.facts["deleted_pod"] = victim
        self.out.line(f"{deployment}: {victim} gone, a new pod took its place")

    def _roll(self) -> None:
        assert self.load is not None
        began = time.time()
        isvc = inference_service(
            [
                variant("stable", "1.0", self.urls["1.0"], 90, self._s3()),
                variant("canary", "2.0", self.urls["2.0"], 10),
            ]
        )
        self.out.line(kube.apply(self.cluster, [isvc]).strip())
        self.out.wait(
            [
                Check(
                    "canary Ready", lambda: self._scaled(deployment_of("canary"), 1, at_least=True)
                ),
                Check("traffic routed", self._routed),
            ],
            self.settings.timeout,
        )
        routed_at = time.time()
        settled = time.monotonic() + SETTLE_SECONDS * 1.5
        self._grpc_through_the_router(settled)  # while the HTTP load settles: no time added
        time.sleep(max(0.0, settled - time.monotonic()))
        split = Summary.of(self.load.record.between(routed_at))
        share = 100 * split.versions.get("2.0", 0) / max(1, split.requests - split.failed)
        self.report.facts["canary_share"] = share
        self.out.line(
            f"after the router took over: {split.describe()}; version 2.0 got {share:.1f} %"
        )
        self._judge("roll", began, zero_failures=True)
        if not 4 <= share <= 18:
            raise ScenarioError(
                f"version 2.0 answered {share:.1f} % of requests, weight 10: {split.describe()}"
            )

    def _grpc_through_the_router(self, deadline: float) -> None:
        """One TorchServe gRPC prediction through the stable Service's gRPC port (the router),
        tried until `deadline`."""
        url = f"grpc://{self.service_ip}:{PORTS['grpc']}/{archives.MODEL}"
        outcome = probe(netns_name(self.cluster.name), url)
        while not outcome.ok and time.monotonic() < deadline:
            time.sleep(1.0)
            outcome = probe(netns_name(self.cluster.name), url)
        if not outcome.ok:
            raise ScenarioError(f"no gRPC prediction through the router at {url}: {outcome.error}")
        self.report.facts["grpc_variant"] = outcome.variant
        self.out.line(
            f"a gRPC prediction through the router ({url}): variant {outcome.variant}, "
            f"model version {outcome.version}"
        )

    def _grayscale(self) -> None:
        """While the HPA waits out the load's 1-minute rate window, TorchServe's MNIST example
        is served by a second InferenceService from marfleet's runtime image, and its answer to
        a 28x28 grayscale PNG must be TorchServe's for the same archive and picture."""
        assert self.load is not None
        self.load.stop()
        self.load_stopped = time.monotonic()
        self.report.load["all"] = total = Summary.of(self.load.record.outcomes())
        self.out.line(f"the whole run: {total.describe()}")
        if importlib.util.find_spec("ts") is None:
            raise ScenarioError(
                "TorchServe 0.12 is not installed here to compare with: run `make setup` "
                "(the dev extra installs it)"
            )
        assert self.server is not None
        store = self.settings.workdir / "models"
        archive, digit = archives.build_mnist(store)
        url = f"{self.server.base_url}/{archive.name}"
        self.out.line(
            f"examples/mnist by torch-model-archiver: {url} ({archive.stat().st_size} bytes)"
        )
        mnist = variant("stable", "1.0", url, 100, None, archives.MNIST)
        fixed = {"engine": "none", "minReplicas": 1}
        self.out.line(kube.apply(self.cluster, [inference_service([mnist], DIGITS, fixed)]).strip())
        theirs = self._torchserve_answer(store, digit)  # while the pod starts
        self.out.wait(
            [Check(f"InferenceService {DIGITS} Ready", lambda: self._ready(DIGITS))],
            self.settings.timeout,
        )
        service = kube.get_json(self.cluster, "service", DIGITS, "-n", NAMESPACE)
        predictions = f"http://{service['spec']['clusterIP']}/predictions/{archives.MNIST}"
        answers: list[str] = []

        def answered() -> Probe:
            outcome = probe(netns_name(self.cluster.name), predictions, digit, "image/png")
            if outcome.status not in (0, 200, 503):  # not an endpoint still coming up
                raise ScenarioError(f"{predictions} answered {outcome.status}: {outcome.error}")
            answers.append(outcome.answer)
            return Probe(outcome.ok, outcome.error or f"answer {outcome.answer}")

        self.out.wait(
            [Check(f"{digit.name} through the Service {DIGITS}", answered)],
            self.settings.timeout,
        )
        pod = f"deploy/{deployment_of('stable', DIGITS)}"
        inside = self.cluster.kubectl("exec", "-n", NAMESPACE, pod, "--", "python3", "-c", WHICH_TS)
        image = json.loads(inside.stdout)
        self.out.line(
            f"in the pod: TorchServe installed: {image['torchserve_installed']}; "
            f"the handler's `import ts` is {image['ts']}"
        )
        ours = answers[-1]
        self.report.facts["grayscale"] = {"marfleet": ours, "torchserve": theirs, **image}
        self.out.line(
            f"{digit.name} (28x28, 8-bit grayscale): marfleet's runtime image answered "
            f"{ours}, TorchServe {theirs}"
        )
        if image["torchserve_installed"]:
            raise ScenarioError(f"the runtime image has TorchServe installed: {image}")
        if ours != theirs:
            raise ScenarioError(
                f"TorchServe's MNIST example answered {ours!r} in marfleet, {theirs!r} in "
                "TorchServe, for the same archive and picture"
            )

    def _torchserve_answer(self, store: Path, digit: Path) -> str:
        """Real TorchServe's answer to `digit`: the same archive, served on loopback."""
        began = time.monotonic()
        home = self.settings.workdir / "torchserve"
        shutil.rmtree(home, ignore_errors=True)
        server = servers.start("torchserve", store, home)
        try:
            server.register(f"{archives.MNIST}.mar", archives.MNIST, 1, 100)
            response = httpx.post(
                f"{server.url('inference')}/predictions/{archives.MNIST}",
                content=digit.read_bytes(),
                headers={"Content-Type": "image/png"},
                timeout=60,
            )
        finally:
            server.stop()
        if response.status_code != 200:
            raise ScenarioError(
                f"TorchServe answered {response.status_code} for {digit.name}: "
                f"{response.text[:300]}; see {home / 'logs'}"
            )
        self.out.line(
            f"TorchServe {importlib.metadata.version('torchserve')} on loopback, same archive "
            f"and picture: {response.text} ({time.monotonic() - began:.1f} s)"
        )
        return response.text

    def _wind_down(self) -> None:
        deployment = deployment_of("stable")
        self.out.wait(
            [
                Check(
                    f"{deployment} back to 1 replica",
                    lambda: self._scaled(deployment, 1, at_least=False),
                )
            ],
            self.settings.timeout,
        )
        self.report.seconds["scale_down"] = time.monotonic() - self.load_stopped
        delete = ["delete", "inferenceservice", ISVC, DIGITS, "-n", NAMESPACE]
        self.out.command(["kubectl", *delete])
        self.cluster.kubectl(*delete, "--timeout=120s")
        self.out.wait(
            [Check(f"nothing of {ISVC} and {DIGITS} left", self._nothing_left)],
            self.settings.timeout,
        )
        self.out.command(["helm", "uninstall", RELEASE, "-n", CHART_NAMESPACE, "--wait"])
        chart.helm(
            *("uninstall", RELEASE, "-n", CHART_NAMESPACE, "--wait"),
            *("--kubeconfig", str(self.cluster.kubeconfig)),
            env=self.cluster.env(),
        )

        def release_gone() -> Probe:
            left = self.cluster.kubectl("get", "all", "-n", CHART_NAMESPACE, "-o", "name")
            return Probe(not left.stdout.split(), f"left: {left.stdout.split()}")

        self.out.wait([Check("nothing of the release left", release_gone)], self.settings.timeout)

    # ----- probes and judgements -----
    def _ready(self, name: str = ISVC) -> Probe:
        obj = kube.get_json(self.cluster, "inferenceservice", name, "-n", NAMESPACE)
        ready = kube.condition(obj, "Ready")
        return Probe(ready.get("status") == "True", ready.get("message", "no Ready condition yet"))

    def _routed(self) -> Probe:
        obj = kube.get_json(self.cluster, "inferenceservice", ISVC, "-n", NAMESPACE)
        traffic = kube.condition(obj, "TrafficReady")
        return Probe(traffic.get("reason") == "Routed", traffic.get("message", ""))

    def _scaled(self, deployment: str, replicas: int, at_least: bool) -> Probe:
        assert self.load is not None
        self.load.check()
        obj = kube.get_json(self.cluster, "deployment", deployment, "-n", NAMESPACE)
        spec = int(obj["spec"].get("replicas", 0))
        ready = int(obj.get("status", {}).get("readyReplicas", 0))
        done = spec >= replicas and ready >= replicas if at_least else spec == ready == replicas
        return Probe(done, f"{ready}/{spec} ready; HPA {self._hpa(deployment)}")

    def _hpa(self, name: str) -> str:
        hpa = kube.get_json(self.cluster, "hpa", name, "-n", NAMESPACE)
        status = hpa.get("status", {})
        values = [
            m.get("pods", {}).get("current", {}).get("averageValue", "?")
            for m in status.get("currentMetrics") or []
        ]
        replicas = f"{status.get('currentReplicas')}→{status.get('desiredReplicas')}"
        return f"current {values or ['<unknown>']} per pod, replicas {replicas}"

    def _nothing_left(self) -> Probe:
        selector = f"{labels.ISVC} in ({ISVC},{DIGITS})"
        kinds = (
            "deployments,replicasets,pods,services,configmaps,hpa,poddisruptionbudgets,"
            "serviceaccounts,roles,rolebindings"
        )
        left = self.cluster.kubectl(
            "get", kinds, "-n", NAMESPACE, "-l", selector, "-o", "name"
        ).stdout.split()
        return Probe(not left, f"left: {left}")

    def _judge(self, phase: str, began: float, zero_failures: bool) -> None:
        assert self.load is not None
        summary = Summary.of(self.load.record.between(began, time.time()))
        self.report.load[phase] = summary
        self.out.line(f"load during this step: {summary.describe()}")
        if summary.requests == 0:
            raise ScenarioError(f"{phase}: the load generator recorded no requests")
        if zero_failures and summary.failed:
            raise ScenarioError(f"{phase}: {summary.failed} requests failed: {summary.describe()}")

    def _s3(self) -> dict[str, Any]:
        assert self.store is not None
        return {"secretName": STORE_SECRET, "endpoint": self.store.endpoint}

    def _stop_helpers(self) -> None:
        for helper in (self.load, self.server, self.store, self.metrics):
            if helper is not None:
                try:
                    helper.stop()
                except Exception as exc:  # teardown goes on; the cluster still comes down
                    self.out.line(f"stopping {type(helper).__name__} failed: {exc}")


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in pod.get("status", {}).get("conditions") or []
    )


def summary_json(report: Report) -> str:
    return json.dumps(
        {
            "seconds": {k: round(v, 1) for k, v in report.seconds.items()},
            "load": {k: s.describe() for k, s in report.load.items()},
            "facts": report.facts,
        },
        indent=2,
        default=str,
    )
