"""`make demo`: marfleet's whole story on one machine, step by step, with real answers.

A local Kubernetes control plane (real etcd, apiserver, scheduler and controller-manager; KWOK
nodes, two of them with simulated GPUs), the Helm chart installed into it, the operator
reconciling the two InferenceServices of examples/demo, and real predictions through the router
to two model servers, split by the InferenceService's weights and following them when they
change.

The cluster is simulated where it has to be: KWOK pods run nothing. So each pod that must really
work (the operator, the router, one model server per canary variant) is run on this machine
from the Pod the scheduler placed (see localpods), with ServiceAccount tokens as credentials.
The first line of the output says so.

Everything started is recorded (the ProcessBook, the cluster's state directory), so `down` ends
exactly that from any process, `up` first ends what an earlier run left running, and an `up`
that fails or is interrupted leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml
from marfleet.operator import labels
from marfleet.operator.rollout_metrics import REQUESTS, PrometheusSource, Subject

from e2e.localcluster import LocalCluster
from e2e.localcluster.toolchain import HELM, KUBERNETES, KWOK, require_built
from e2e.prometheus import chart
from e2e.prometheus.server import Target
from e2e.support import free_port

from . import kube, monitoring, standins, traffic
from .console import Check, Console, DemoError, Probe
from .localpods import LocalPod, local_pod
from .processes import Entry, ProcessBook, is_running

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "demo"
MANIFESTS = (EXAMPLES / "canary.yaml", EXAMPLES / "gpu.yaml")
BUILDER = EXAMPLES / "build.py"
RELEASE = "marfleet"
CHART_NAMESPACE = "marfleet-system"
OPERATOR_LEASE = "marfleet-operator"
OPERATOR_SELECTOR = {labels.INSTANCE: RELEASE, labels.COMPONENT: "operator"}
CANARY = "classifier"
GPU = "classifier-gpu"
MODEL = "classifier"
SEEDS = {"1.0": 1, "2.0": 2}
NEW_WEIGHTS = {"stable": 50, "canary": 50}
STEPS = 11
LOG_LINE_CHARS = 300
PROMETHEUS_GRAPH = "sum+by+(variant)+(rate(marfleet_requests_total[1m]))"

SIMULATED = (
    "marfleet demo on a simulated cluster: the Kubernetes objects are real (etcd, kube-apiserver,\n"
    "scheduler, controller-manager), the 4 nodes and their pods are simulated by KWOK, so the\n"
    "operator, the router and the model servers run as local processes on this machine, each\n"
    "started from the Pod the scheduler placed. Predictions and the traffic split are real."
)


@dataclass(frozen=True)
class DemoSettings:
    state_dir: Path
    cluster: str = "demo"
    requests: int = 200
    timeout: float = 180.0


class Demo:
    def __init__(self, settings: DemoSettings, console: Console) -> None:
        self.settings = settings
        self.out = console
        self.cluster = LocalCluster(settings.cluster)
        self.book = ProcessBook(settings.state_dir / "processes.json")
        self.logs = settings.state_dir / "logs"
        self.marfleet = Path(sys.executable).with_name("marfleet")
        self.namespace = ""
        self.servers: dict[str, tuple[Entry, str]] = {}  # variant -> (process, inference URL)
        self.grpc_targets: dict[str, str] = {}  # variant -> host:port of its gRPC port
        self.targets: list[Target] = []
        self.router_url = ""
        self.router_metrics = ""
        self.prometheus_port = free_port()
        self.prometheus_url = f"http://127.0.0.1:{self.prometheus_port}"
        self.operator: Entry | None = None

    # ----- the two commands -----
    def up(self) -> float:
        """Tell the story; returns the seconds it took. Leaves nothing behind if it fails."""
        started = time.monotonic()
        self.out.say(SIMULATED)
        try:
            self._tools()
            self._cluster()
            self._chart()
            self._operator()
            archives = self._archives()
            weights = self._apply(archives)
            self._placement()
            self._stand_ins(weights)
            self._prometheus()
            self._traffic(weights)
        except BaseException:
            self._log_tails()
            self.out.say("\nthe demo did not finish; removing everything it started")
            self.down(quiet=True)
            raise
        seconds = time.monotonic() - started
        self._summary(seconds)
        return seconds

    def down(self, quiet: bool = False) -> None:
        stopped = self.book.stop_all()
        self.cluster.down()
        shutil.rmtree(self.settings.state_dir, ignore_errors=True)
        if not quiet:
            names = ", ".join(e.name for e in stopped) or "none running"
            self.out.say(f"stopped local processes: {names}")
            self.out.say(f"stopped cluster {self.settings.cluster!r} and removed its state")
            self.out.say(f"removed {self.settings.state_dir}")

    # ----- steps -----
    def _tools(self) -> None:
        self.out.step("tools and leftovers")
        require_built()
        for tool in (KUBERNETES, KWOK, HELM):
            self.out.line(f"{tool.pinned_module} {tool.version}: {tool.bin_dir}")
        earlier = self.book.stop_all()
        if earlier:
            self.out.line(
                f"stopped an earlier run's processes: {', '.join(e.name for e in earlier)}"
            )
        shutil.rmtree(self.settings.state_dir / "pods", ignore_errors=True)
        self.logs.mkdir(parents=True, exist_ok=True)

    def _cluster(self) -> None:
        self.out.step(f"local Kubernetes control plane {self.settings.cluster!r}")
        started = time.monotonic()
        already = self.cluster.is_running()
        self.cluster.up()
        how = "already running" if already else f"up in {time.monotonic() - started:.1f} s"
        self.out.line(f"{how}: {self.cluster.server}, KUBECONFIG={self.cluster.kubeconfig}")
        self.out.block(
            self.cluster.kubectl(
                "get", "nodes", "-L", "nvidia.com/gpu.product", "-L", "nvidia.com/gpu.count"
            ).stdout
        )

    def _chart(self) -> None:
        self.out.step("install the Helm chart")
        # The operator runs on this machine, where cluster DNS does not reach the routers: it
        # reads their numbers for rollouts from the demo's Prometheus (chart rollout.*).
        args = [
            *("upgrade", "--install", RELEASE, "charts/marfleet"),
            *("--namespace", CHART_NAMESPACE, "--create-namespace", "--wait", "--timeout", "120s"),
            "--set",
            f"rollout.prometheusUrl={self.prometheus_url}",
        ]
        self.out.command(["helm", *args])
        chart.helm(
            *args[:3],
            str(chart.CHART_DIR),
            *args[4:],
            "--kubeconfig",
            str(self.cluster.kubeconfig),
            env=self.cluster.env(),
        )
        self.out.block(
            self.cluster.kubectl(
                "get", "deployments,serviceaccounts,leases", "-n", CHART_NAMESPACE
            ).stdout
        )

    def _operator(self) -> None:
        self.out.step("the operator, with nothing but the chart's ServiceAccount token")
        pods = kube.running_pods(self.cluster, CHART_NAMESPACE, OPERATOR_SELECTOR)
        if not pods:
            raise DemoError(f"the chart's operator pods are not Running in {CHART_NAMESPACE}")
        pod = self._local_pod(pods[0])
        credentials = self._credentials(pod)
        port = free_port()
        entry = standins.start(
            self.book,
            pod,
            "operator",
            self.logs,
            extra_args=["--kubeconfig", str(credentials), "--host", "127.0.0.1"],
            env={"MARFLEET_METRICS_PORT": str(port)},
        )
        self.out.line(
            f"{len(pods)} operator pods Running on simulated nodes; {pod.name} ({pod.node}) "
            f"runs here as pid {entry.pid}, as ServiceAccount {pod.service_account}"
        )
        self.operator = entry
        self.targets.append(
            Target(
                "marfleet-operator",
                f"127.0.0.1:{port}",
                {"namespace": CHART_NAMESPACE, "pod": pod.name},
            )
        )
        identity = f"{pod.name}-{entry.pid}"

        def leading() -> Probe:
            self._check_alive(entry)
            lease = kube.get_json(self.cluster, "lease", OPERATOR_LEASE, "-n", CHART_NAMESPACE)
            holder = lease["spec"].get("holderIdentity", "")
            return Probe(holder == identity, f"Lease {OPERATOR_LEASE} held by {holder or 'nobody'}")

        self.out.wait([Check("operator elected leader", leading)], self.settings.timeout)

    def _archives(self) -> dict[str, Path]:
        self.out.step("build the model archives with `marfleet archive` (random weights)")
        archives = {}
        for version, seed in SEEDS.items():
            out = self.settings.state_dir / "models" / version
            result = subprocess.run(
                [
                    sys.executable,
                    str(BUILDER),
                    "--out",
                    str(out),
                    "--version",
                    version,
                    "--seed",
                    str(seed),
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
            if result.returncode != 0:
                raise DemoError(f"building version {version} failed:\n{result.stderr[-2000:]}")
            command = next(line for line in result.stdout.splitlines() if line.startswith("$ "))
            self.out.line(f"version {version}: {command}")
            archives[version] = out / f"{MODEL}.mar"
            self.out.line(f"  -> {archives[version]} ({archives[version].stat().st_size} bytes)")
        return archives

    def _apply(self, archives: Mapping[str, Path]) -> dict[str, int]:
        self.out.step("apply the examples: a 90/10 canary and a GPU InferenceService")
        objects = [d for path in MANIFESTS for d in yaml.safe_load_all(path.read_text()) if d]
        weights: dict[str, int] = {}
        for obj in objects:
            if obj["kind"] != "InferenceService":
                continue
            for variant in obj["spec"]["variants"]:
                variant["model"]["uri"] = archives[variant["model"]["version"]].as_uri()
            if obj["metadata"]["name"] == CANARY:
                self.namespace = obj["metadata"]["namespace"]
                weights = {v["name"]: int(v["weight"]) for v in obj["spec"]["variants"]}
        self.out.command(["kubectl", "apply", *(f"-f={p.relative_to(REPO)}" for p in MANIFESTS)])
        self.out.line("(each model.uri set to the archive of its version built above)")
        self.out.block(kube.apply(self.cluster, objects))
        return weights

    def _placement(self) -> None:
        self.out.step("the operator renders, the scheduler places")
        selectors = {
            f"{CANARY}-{variant}": {labels.ISVC: CANARY, labels.VARIANT: variant}
            for variant in ("stable", "canary")
        }
        selectors[f"{CANARY}-router"] = {labels.ISVC: CANARY, labels.COMPONENT: labels.ROUTER}
        selectors[f"{GPU}-main"] = {labels.ISVC: GPU, labels.VARIANT: "main"}

        def placed(selector: Mapping[str, str]) -> Probe:
            self._check_operator()
            pods = kube.running_pods(self.cluster, self.namespace, selector)
            if not pods:
                return Probe(False, "no Running pod yet")
            node = pods[0]["spec"]["nodeName"]
            product = kube.get_json(self.cluster, "node", node)["metadata"]["labels"].get(
                "nvidia.com/gpu.product", "no GPU"
            )
            return Probe(True, f"pod {pods[0]['metadata']['name']} on {node} ({product})")

        self.out.wait(
            [Check(name, partial(placed, s)) for name, s in selectors.items()],
            self.settings.timeout,
        )
        self.out.block(
            self.cluster.kubectl(
                "get", "deployments,services,hpa,configmaps", "-n", self.namespace
            ).stdout
        )

    def _stand_ins(self, weights: Mapping[str, int]) -> None:
        self.out.step("run the canary's pods here: a model server per variant and the router")
        for variant in weights:
            selector = {labels.ISVC: CANARY, labels.VARIANT: variant}
            pod = self._local_pod(kube.running_pods(self.cluster, self.namespace, selector)[0])
            standins.run_init_containers(pod, self.logs)
            ports = {name: free_port() for name in ("inference", "management", "metrics")}
            grpc_port = free_port()
            entry = standins.start(
                self.book,
                pod,
                "server",
                self.logs,
                env={
                    **{
                        f"TS_{name.upper()}_ADDRESS": f"http://127.0.0.1:{port}"
                        for name, port in ports.items()
                    },
                    "TS_GRPC_INFERENCE_PORT": str(grpc_port),
                    "TS_GRPC_MANAGEMENT_PORT": str(free_port()),
                },
            )
            self.grpc_targets[variant] = f"127.0.0.1:{grpc_port}"
            url = f"http://127.0.0.1:{ports['inference']}"
            self.servers[variant] = (entry, url)
            self.out.line(
                f"{variant}: fetched by init container {pod.init_containers[0].name}; "
                f"marfleet serve pid {entry.pid} for pod {pod.name}, {url}"
            )
            pod_labels = {"namespace": self.namespace, "pod": pod.name, "isvc": CANARY}
            self.targets.append(
                Target("marfleet-runtime", f"127.0.0.1:{ports['metrics']}", pod_labels)
            )
        router = self._start_router()
        checks = [
            Check(f"model server {variant}", partial(self._healthy, variant)) for variant in weights
        ]
        checks.append(Check("router", partial(self._router_follows, router, weights)))
        checks += [Check(f"{name} Ready", partial(self._ready, name)) for name in (CANARY, GPU)]
        self.out.wait(checks, self.settings.timeout)

    def _start_router(self) -> Entry:
        selector = {labels.ISVC: CANARY, labels.COMPONENT: labels.ROUTER}
        pod = self._local_pod(kube.running_pods(self.cluster, self.namespace, selector)[0])
        router = pod.container("router")
        backends = [
            {**backend, "url": self.servers[backend["variant"]][1]}
            for backend in json.loads(router.env["MARFLEET_ROUTER_BACKENDS"])
        ]
        credentials = self._credentials(pod)
        port, metrics_port = free_port(), free_port()
        entry = standins.start(
            self.book,
            pod,
            "router",
            self.logs,
            extra_args=[
                *("--kubeconfig", str(credentials), "--host", "127.0.0.1"),
                *("--port", str(port), "--metrics-port", str(metrics_port)),
                *("--grpc-port", str(free_port())),
                *(f"--grpc-backend={name}={target}" for name, target in self.grpc_targets.items()),
            ],
            env={"MARFLEET_ROUTER_BACKENDS": json.dumps(backends)},
        )
        self.router_url = f"http://127.0.0.1:{port}"
        self.router_metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        self.out.line(
            f"router: marfleet router pid {entry.pid} for pod {pod.name}, {self.router_url}, "
            f"following InferenceService {CANARY}'s weights as ServiceAccount {pod.service_account}"
        )
        self.targets.append(
            Target(
                "marfleet-router", f"127.0.0.1:{metrics_port}", {"pod": pod.name}, honor_labels=True
            )
        )
        return entry

    def _prometheus(self) -> None:
        self.out.step("Prometheus scrapes them, with the chart's rules and alerts")
        entry = monitoring.start(
            self.book,
            self.targets,
            self.settings.state_dir / "prometheus",
            self.logs / "prometheus.log",
            self.prometheus_port,
        )

        def scraping() -> Probe:
            self._check_alive(entry)
            up, configured = monitoring.targets_up(self.prometheus_url)
            return Probe(up == len(self.targets), f"{up}/{configured} targets up")

        self.out.wait([Check(f"Prometheus {self.prometheus_url}", scraping)], 60)

    def _traffic(self, weights: Mapping[str, int]) -> None:
        self.out.step("real predictions through the router")
        requests = self.settings.requests
        example = json.dumps({"features": traffic.SAMPLE_INPUTS[0]})
        self.out.command(
            [
                "curl",
                f"{self.router_url}/predictions/{MODEL}",
                "-H",
                "Content-Type: application/json",
                "-d",
                example,
            ]
        )
        self._send(requests, weights, show_samples=True)
        self._router_scraped(requests)
        patch = [
            {"op": "replace", "path": f"/spec/variants/{index}/weight", "value": NEW_WEIGHTS[name]}
            for index, name in enumerate(weights)
        ]
        args = ["patch", "inferenceservice", CANARY, "-n", self.namespace, "--type=json"]
        self.out.say("")
        self.out.line("now change the weights to 50/50:")
        self.out.command(["kubectl", *args, "-p", json.dumps(patch)])
        changed = time.monotonic()
        self.cluster.kubectl(*args, "-p", json.dumps(patch))

        def followed() -> Probe:
            seen = traffic.router_weights(self.router_metrics)
            return Probe(seen == NEW_WEIGHTS, ", ".join(f"{k}={v}" for k, v in seen.items()))

        self.out.wait([Check("router weights", followed)], 60, poll=0.1)
        self.out.line(f"the router followed {time.monotonic() - changed:.1f} s after the patch")
        self._send(requests, NEW_WEIGHTS, show_samples=False)
        self._prometheus_counts(2 * requests)
        self._rollout_numbers(changed)

    def _router_scraped(self, expected: int) -> None:
        """Wait until Prometheus holds this router's counts of the answers just sent.

        `increase()` starts at a series' first scrape: a series that appears (on the router's
        first answer of a variant and version) and is first scraped only after the answers
        that follow the weight change would show those answers as no increase at all. Both
        rounds of predictions fit in one 2 s scrape interval, so the demo makes sure the
        first round is in Prometheus before the second begins. Only this router's series
        count (its `instance`): after an `up` over a running demo, Prometheus still returns
        the previous router's last values for a few minutes."""
        instance = urlsplit(self.router_metrics).netloc
        selector = f'namespace="{self.namespace}",isvc="{CANARY}",instance="{instance}"'
        expr = f"sum by (variant) ({REQUESTS}{{{selector}}})"

        def scraped() -> Probe:
            counts = {k: int(v) for k, v in monitoring.query(self.prometheus_url, expr).items()}
            detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no series yet"
            return Probe(sum(counts.values()) >= expected, detail)

        self.out.say("")
        self.out.line(f"the router's counters, as Prometheus scraped them ({expr}):")
        self.out.wait([Check(f"{REQUESTS} by variant", scraped)], 30)

    def _rollout_numbers(self, changed: float) -> None:
        """What a progressive rollout of the canary would be judged on, read the way the
        operator reads it (the Prometheus the chart's rollout.prometheusUrl names), over the
        time since the weight change (`changed`, monotonic): the window grows with each look,
        as a rollout step's does, so the answers sent after the change stay in it however
        long Prometheus takes to scrape them."""
        source = PrometheusSource(self.prometheus_url)

        def judged() -> Probe:
            seconds = time.monotonic() - changed
            subject = Subject(
                self.namespace, CANARY, "canary", ("stable",), "demo", seconds, version="2.0"
            )
            seen = asyncio.run(source.observe(subject))
            detail = (
                f"canary {seen.canary.requests:.0f} answers of version 2.0, error ratio "
                f"{seen.canary.error_ratio:.4f}; stable {seen.stable.requests:.0f}"
            )
            return Probe(seen.canary.requests > 0 and seen.stable.requests > 0, detail)

        self.out.say("")
        self.out.line(
            f"a rollout's numbers, as the operator reads them from {self.prometheus_url}:"
        )
        self.out.wait([Check("rollout analysis source", judged)], 30)

    def _send(self, requests: int, weights: Mapping[str, int], show_samples: bool) -> None:
        started = time.monotonic()
        tally = traffic.predict(self.router_url, MODEL, requests)
        seconds = time.monotonic() - started
        self.out.line(f"{requests} predictions in {seconds:.1f} s, answered by:")
        self.out.split(tally.counts, weights)
        if tally.failures:
            raise DemoError(f"predictions failed: {dict(tally.failures)} (HTTP status: count)")
        if show_samples:
            for variant in weights:
                if variant in tally.samples:
                    features, answer = tally.samples[variant]
                    self.out.line(f"{variant} answered {features} with {json.dumps(answer)}")

    def _prometheus_counts(self, expected: int) -> None:
        expr = f'sum by (variant) (marfleet_requests_total{{namespace="{self.namespace}"}})'

        def counted() -> Probe:
            counts = {k: int(v) for k, v in monitoring.query(self.prometheus_url, expr).items()}
            detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            return Probe(sum(counts.values()) >= expected, detail)

        self.out.say("")
        self.out.line(f"the model servers' own counters, as Prometheus scraped them ({expr}):")
        self.out.wait([Check("marfleet_requests_total by variant", counted)], 30)

    def _summary(self, seconds: float) -> None:
        self.out.step("where things stand")
        self.out.command(["kubectl", "get", "inferenceservices", "-n", self.namespace])
        self.out.block(
            self.cluster.kubectl("get", "inferenceservices", "-n", self.namespace).stdout
        )
        kubectl = KUBERNETES.path("kubectl")
        example = json.dumps({"features": traffic.SAMPLE_INPUTS[1]})
        self.out.say(
            f"""
Where to look next:
  export KUBECONFIG={self.cluster.kubeconfig}
  {kubectl} get inferenceservices,deployments,pods -n {self.namespace} -o wide
  curl {self.router_url}/predictions/{MODEL} -H 'Content-Type: application/json' -d '{example}'
  Prometheus: {self.prometheus_url}/graph?g0.expr={PROMETHEUS_GRAPH}
              (the chart's alerts: {self.prometheus_url}/alerts)
  logs:       {self.logs}/  (operator, router, model servers, init containers, Prometheus)
  make demo-down   stops every process listed in {self.book.path} and the cluster

demo up in {seconds:.0f} s"""
        )

    # ----- helpers -----
    def _local_pod(self, pod: Mapping[str, Any]) -> LocalPod:
        volumes = pod["spec"].get("volumes") or []
        config_maps = {
            v["configMap"]["name"]: kube.get_json(
                self.cluster,
                "configmap",
                v["configMap"]["name"],
                "-n",
                pod["metadata"]["namespace"],
            ).get("data", {})
            for v in volumes
            if "configMap" in v
        }
        root = self.settings.state_dir / "pods" / pod["metadata"]["name"]
        local = local_pod(pod, config_maps, root, self.marfleet)
        standins.prepare(local)
        return local

    def _credentials(self, pod: LocalPod) -> Path:
        """A kubeconfig with a token of the pod's ServiceAccount: what it has in the cluster."""
        if not pod.service_account:
            raise DemoError(f"pod {pod.name} is given no ServiceAccount token, yet needs the API")
        path = self.settings.state_dir / "credentials" / f"{pod.name}.kubeconfig"
        return self.cluster.service_account_kubeconfig(pod.namespace, pod.service_account, path)

    def _check_operator(self) -> None:
        if self.operator is not None:
            self._check_alive(self.operator)

    def _check_alive(self, entry: Entry) -> None:
        if not is_running(entry):
            tail = "\n".join(Path(entry.log).read_text(errors="replace").splitlines()[-15:])
            raise DemoError(f"{entry.name} (pid {entry.pid}) exited; its log ends:\n{tail}")

    def _healthy(self, variant: str) -> Probe:
        entry, url = self.servers[variant]
        self._check_alive(entry)
        reply = httpx.get(f"{url}/ping", timeout=2)
        status = reply.json().get("status", reply.status_code)
        return Probe(reply.status_code == 200, f"/ping: {status}")

    def _router_follows(self, router: Entry, weights: Mapping[str, int]) -> Probe:
        self._check_alive(router)
        seen = traffic.router_weights(self.router_metrics)
        detail = ", ".join(f"{k}={v}" for k, v in seen.items()) or "no weights yet"
        return Probe(seen == dict(weights), f"weights in force: {detail}")

    def _ready(self, name: str) -> Probe:
        self._check_operator()
        isvc = kube.get_json(self.cluster, "inferenceservice", name, "-n", self.namespace)
        ready = kube.condition(isvc, "Ready")
        if ready.get("status") == "True":
            return Probe(True, f"traffic {isvc['status'].get('traffic', '')}")
        return Probe(False, f"{ready.get('reason', 'no status yet')}: {ready.get('message', '')}")

    def _log_tails(self) -> None:
        for entry in self.book.entries():
            if not is_running(entry):
                path = Path(entry.log)
                tail = path.read_text(errors="replace").splitlines()[-10:] if path.exists() else []
                self.out.say(f"\n{entry.name} is not running; {path} ends:")
                self.out.block("\n".join(line[:LOG_LINE_CHARS] for line in tail))
