"""A fleet in miniature for Prometheus to scrape: real `marfleet serve` processes on loopback,
each standing in for one pod of one variant, a real `marfleet router` splitting traffic between
them, and traffic that produces every kind of series the chart's dashboards and alerts read:
successes, slow requests, handler errors, worker crashes, a full queue and a worker that fails
to load its model.

The model is a handler that sleeps for the time each request asks, fails or kills its worker
when told to, and fails to load while a marker file exists, so faults are real (a real worker
dies, a real queue overflows) and the load costs almost no CPU. Archives are made by the real
`torch-model-archiver`.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from e2e.support import Started, free_port, terminate

from .server import Target

HANDLER = '''"""Answers after the delay a request asks for; fails or kills its worker if told.
A worker starting while the file named by $FLEET_FAIL_LOAD exists fails to load."""
import json
import os
import time


def handle(data, context):
    if data is None:
        marker = os.environ.get("FLEET_FAIL_LOAD", "")
        if marker and os.path.exists(marker):
            raise RuntimeError("asked to fail loading")
        return None
    replies = []
    for row in data:
        body = row.get("body") or row.get("data") or b"{}"
        order = body if isinstance(body, dict) else json.loads(body)
        if order.get("crash"):
            os._exit(3)
        if order.get("fail"):
            raise RuntimeError("asked to fail")
        time.sleep(order.get("ms", 0) / 1000)
        replies.append({"ok": True})
    return replies
'''
MODEL_CONFIG = """minWorkers: 1
maxWorkers: 1
batchSize: 4
maxBatchDelay: 20
responseTimeout: 10
jobQueueSize: 12
"""
MODEL = "cart"
NAMESPACE = "shop"
ROUTER_WEIGHTS = {"stable": 90, "canary": 10}


@dataclass(frozen=True)
class Pod:
    """One process and the Kubernetes identity it stands in for."""

    name: str
    variant: str
    inference_port: int = field(default_factory=free_port)
    management_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.inference_port}{path}"


@dataclass(frozen=True)
class Traffic:
    """What the load looks like: per-variant handler failure ratios, the share of slow (600 ms)
    requests, and how often each runtime is sent a crash and a burst bigger than its queue."""

    fail_ratio: Mapping[str, float] = field(
        default_factory=lambda: {"stable": 0.01, "canary": 0.04}
    )
    slow_ratio: float = 0.06
    fault_every_seconds: float = 6.0
    clients_per_pod: int = 3
    clients_via_router: int = 2


def make_archive(store: Path, workdir: Path, name: str, handler_source: str) -> Path:
    """Pack a handler into `store/<name>.mar` with the real torch-model-archiver."""
    source = workdir / f"{name}-src"
    source.mkdir(parents=True, exist_ok=True)
    (source / "handler.py").write_text(handler_source)
    (source / "model-config.yaml").write_text(MODEL_CONFIG)
    archiver = Path(sys.executable).with_name("torch-model-archiver")
    command = [
        str(archiver),
        *("--model-name", name, "--version", "1.0", "--force"),
        *("--handler", str(source / "handler.py")),
        *("--config-file", str(source / "model-config.yaml")),
        *("--export-path", str(store)),
    ]
    subprocess.run(command, check=True, capture_output=True)
    return store / f"{name}.mar"


class Fleet(Started):
    """One runtime process per variant of the InferenceService `cart`, and its router."""

    def __init__(self, workdir: Path, variants: Sequence[str] = tuple(ROUTER_WEIGHTS)) -> None:
        self.workdir = workdir
        self.pods = tuple(Pod(f"{MODEL}-{variant}-0", variant) for variant in variants)
        self.router = Pod(f"{MODEL}-router-0", "")
        self._processes: list[subprocess.Popen[bytes]] = []

    def targets(self) -> list[Target]:
        """Scrape targets labelled as the chart's PodMonitors label them in a cluster."""
        runtimes = [
            Target(
                "marfleet-runtime",
                f"127.0.0.1:{pod.metrics_port}",
                {"namespace": NAMESPACE, "pod": pod.name, "isvc": MODEL},
            )
            for pod in self.pods
        ]
        router = Target(
            "marfleet-router",
            f"127.0.0.1:{self.router.metrics_port}",
            {"namespace": NAMESPACE, "pod": self.router.name},
            honor_labels=True,
        )
        return [*runtimes, router]

    def start(self, timeout: float = 120) -> None:
        store = self.workdir / "model-store"
        store.mkdir(parents=True, exist_ok=True)
        make_archive(store, self.workdir, MODEL, HANDLER)
        try:
            for pod in self.pods:
                self._start_runtime(pod, store)
            self._spawn(
                self.router,
                [
                    "router",
                    *("--isvc", MODEL, "--namespace", NAMESPACE, "--host", "127.0.0.1"),
                    *(
                        f"--backend={p.variant}=http://127.0.0.1:{p.inference_port}"
                        for p in self.pods
                    ),
                    "--weights",
                    ",".join(f"{p.variant}={ROUTER_WEIGHTS[p.variant]}" for p in self.pods),
                    *("--port", str(self.router.inference_port)),
                    *("--metrics-port", str(self.router.metrics_port)),
                ],
                {},
            )
            deadline = time.monotonic() + timeout
            for pod in (*self.pods, self.router):
                self._wait_serving(pod, deadline)
        except BaseException:
            self.stop()
            raise

    def _start_runtime(self, pod: Pod, store: Path) -> None:
        home = self.workdir / pod.name
        home.mkdir(parents=True, exist_ok=True)
        config = home / "config.properties"
        config.write_text(
            f"inference_address=http://127.0.0.1:{pod.inference_port}\n"
            f"management_address=http://127.0.0.1:{pod.management_port}\n"
            f"metrics_address=http://127.0.0.1:{pod.metrics_port}\n"
        )
        self._spawn(
            pod,
            [
                "serve",
                "--foreground",
                *("--model-store", str(store), "--models", f"{MODEL}={MODEL}.mar"),
                *("--ts-config", str(config)),
                "--disable-token-auth",
            ],
            {"MARFLEET_VARIANT": pod.variant, "FLEET_FAIL_LOAD": str(self.fail_load_marker(pod))},
        )

    def _spawn(self, pod: Pod, args: list[str], env: Mapping[str, str]) -> None:
        home = self.workdir / pod.name
        home.mkdir(parents=True, exist_ok=True)
        marfleet = Path(sys.executable).with_name("marfleet")
        with (home / "process.log").open("wb") as log:
            self._processes.append(
                subprocess.Popen(
                    [str(marfleet), *args],
                    cwd=home,
                    env={"PATH": "/usr/bin:/bin", "HOME": str(home), **env},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    def _wait_serving(self, pod: Pod, deadline: float) -> None:
        process = self._processes[(*self.pods, self.router).index(pod)]
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{pod.name} exited: {self.log_tail(pod)}")
            try:
                if httpx.post(pod.url(f"/predictions/{MODEL}"), json={}, timeout=5).is_success:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{pod.name} not serving in time: {self.log_tail(pod)}")
            time.sleep(0.3)

    def log_tail(self, pod: Pod, lines: int = 20) -> str:
        path = self.workdir / pod.name / "process.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        processes, self._processes = self._processes, []
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            terminate(process)

    def metrics_text(self, pod: Pod) -> str:
        return httpx.get(f"http://127.0.0.1:{pod.metrics_port}/metrics", timeout=10).text

    def expositions(self) -> dict[str, str]:
        return {pod.name: self.metrics_text(pod) for pod in (*self.pods, self.router)}

    def fail_load_marker(self, pod: Pod) -> Path:
        return self.workdir / pod.name / "fail-load"

    def fail_one_load(self, pod: Pod, timeout: float = 60) -> None:
        """Crash the worker while its model cannot load, until the runtime counts the failure."""
        marker = self.fail_load_marker(pod)
        marker.touch()
        try:
            with httpx.Client(timeout=15) as client:
                while _predict(client, pod, {"crash": True}) == 503:
                    time.sleep(0.2)
            deadline = time.monotonic() + timeout
            while not any(
                line.startswith("marfleet_model_load_failures_total{")
                for line in self.metrics_text(pod).splitlines()
            ):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{pod.name} counted no load failure in {timeout}s")
                time.sleep(0.3)
        finally:
            marker.unlink()

    def drive(
        self, seconds: float, traffic: Traffic | None = None, seed: int = 7
    ) -> dict[int, int]:
        """Send `traffic` for `seconds`; return how many responses had each status."""
        traffic = traffic or Traffic()
        statuses: dict[int, int] = {}
        lock = threading.Lock()
        stop_at = time.monotonic() + seconds

        def record(status: int) -> None:
            with lock:
                statuses[status] = statuses.get(status, 0) + 1

        def steady(pod: Pod, fail_ratio: float, rng: random.Random) -> None:
            with httpx.Client(timeout=15) as client:
                while time.monotonic() < stop_at:
                    roll = rng.random()
                    order: dict[str, object] = {"ms": rng.uniform(5, 60)}
                    if roll < fail_ratio:
                        order = {"fail": True}
                    elif roll < fail_ratio + traffic.slow_ratio:
                        order = {"ms": 600}
                    record(_predict(client, pod, order))

        def faults(pod: Pod) -> None:
            with httpx.Client(timeout=15) as client:
                while time.monotonic() < stop_at:
                    record(_predict(client, pod, {"crash": True}))
                    for status in _burst(pod, 30, {"ms": 80}):
                        record(status)
                    time.sleep(min(traffic.fault_every_seconds, max(0, stop_at - time.monotonic())))

        rng = random.Random(seed)
        router_fail = sum(traffic.fail_ratio.get(v, 0) * w / 100 for v, w in ROUTER_WEIGHTS.items())
        loops: list[tuple[Callable[..., None], tuple[object, ...]]] = [
            (steady, (pod, traffic.fail_ratio.get(pod.variant, 0), random.Random(rng.random())))
            for pod in self.pods
            for _ in range(traffic.clients_per_pod)
        ]
        loops += [
            (steady, (self.router, router_fail, random.Random(rng.random())))
            for _ in range(traffic.clients_via_router)
        ]
        if traffic.fault_every_seconds > 0:
            loops += [(faults, (pod,)) for pod in self.pods]
        threads = [threading.Thread(target=target, args=args) for target, args in loops]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return statuses


def _predict(client: httpx.Client, pod: Pod, order: dict[str, object]) -> int:
    try:
        return client.post(pod.url(f"/predictions/{MODEL}"), content=json.dumps(order)).status_code
    except httpx.TransportError:
        return 0


def _burst(pod: Pod, size: int, order: dict[str, object]) -> list[int]:
    """`size` requests at once: more than the queue holds, so some are refused with 503."""
    results: list[int] = []
    lock = threading.Lock()

    def one() -> None:
        with httpx.Client(timeout=15) as client:
            status = _predict(client, pod, order)
        with lock:
            results.append(status)

    threads = [threading.Thread(target=one) for _ in range(size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results
