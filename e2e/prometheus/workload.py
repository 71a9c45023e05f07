"""A fleet in miniature for Prometheus to scrape: real `marfleet serve` processes on loopback,
each standing in for one pod of one variant, and traffic that produces every kind of series the
chart's dashboards and alerts read: successes, slow requests, handler errors, worker crashes,
a full queue and a worker that fails to load its model.

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
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import httpx

from .server import Target, free_port

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


@dataclass(frozen=True)
class Pod:
    """One `marfleet serve` process and the Kubernetes identity it stands in for."""

    namespace: str
    isvc: str
    variant: str
    inference_port: int
    management_port: int
    metrics_port: int

    @property
    def name(self) -> str:
        return f"{self.isvc}-{self.variant}-0"

    def target(self) -> Target:
        labels = {"namespace": self.namespace, "pod": self.name, "isvc": self.isvc}
        return Target("marfleet-runtime", f"127.0.0.1:{self.metrics_port}", labels)

    def url(self, port: int, path: str) -> str:
        return f"http://127.0.0.1:{port}{path}"


def make_archive(store: Path, workdir: Path, name: str, handler_source: str) -> Path:
    """Pack a handler into `store/<name>.mar` with the real torch-model-archiver."""
    source = workdir / f"{name}-src"
    source.mkdir(parents=True, exist_ok=True)
    (source / "handler.py").write_text(handler_source)
    (source / "model-config.yaml").write_text(MODEL_CONFIG)
    archiver = Path(sys.executable).with_name("torch-model-archiver")
    subprocess.run(
        [
            str(archiver),
            "--model-name",
            name,
            "--version",
            "1.0",
            "--handler",
            str(source / "handler.py"),
            "--config-file",
            str(source / "model-config.yaml"),
            "--export-path",
            str(store),
            "--force",
        ],
        check=True,
        capture_output=True,
    )
    return store / f"{name}.mar"


class Fleet:
    """Runtime processes for the given variants of one InferenceService."""

    def __init__(
        self,
        workdir: Path,
        variants: tuple[str, ...] = ("stable", "canary"),
        namespace: str = "shop",
    ) -> None:
        self.workdir = workdir
        self.pods = tuple(
            Pod(namespace, MODEL, variant, free_port(), free_port(), free_port())
            for variant in variants
        )
        self._processes: list[subprocess.Popen[bytes]] = []

    def targets(self) -> list[Target]:
        return [pod.target() for pod in self.pods]

    def start(self, timeout: float = 90) -> None:
        store = self.workdir / "model-store"
        store.mkdir(parents=True, exist_ok=True)
        make_archive(store, self.workdir, MODEL, HANDLER)
        marfleet = Path(sys.executable).with_name("marfleet")
        for pod in self.pods:
            home = self.workdir / pod.name
            home.mkdir(exist_ok=True)
            config = home / "config.properties"
            config.write_text(
                f"inference_address=http://127.0.0.1:{pod.inference_port}\n"
                f"management_address=http://127.0.0.1:{pod.management_port}\n"
                f"metrics_address=http://127.0.0.1:{pod.metrics_port}\n"
            )
            log = (home / "serve.log").open("wb")
            self._processes.append(
                subprocess.Popen(
                    [
                        str(marfleet),
                        "serve",
                        "--foreground",
                        "--model-store",
                        str(store),
                        "--models",
                        f"{MODEL}={MODEL}.mar",
                        "--ts-config",
                        str(config),
                        "--disable-token-auth",
                        "--enable-model-api",
                    ],
                    cwd=home,
                    env={
                        "PATH": "/usr/bin:/bin",
                        "HOME": str(home),
                        "MARFLEET_VARIANT": pod.variant,
                        "FLEET_FAIL_LOAD": str(self.fail_load_marker(pod)),
                    },
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            log.close()
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for pod, process in zip(self.pods, self._processes, strict=True):
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"{pod.name} exited: {self.log_tail(pod)}")
                try:
                    ready = httpx.post(
                        pod.url(pod.inference_port, f"/predictions/{MODEL}"), json={}, timeout=5
                    )
                    if ready.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{pod.name} not serving after {timeout}s")
                time.sleep(0.3)

    def log_tail(self, pod: Pod, lines: int = 20) -> str:
        path = self.workdir / pod.name / "serve.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        processes, self._processes = self._processes, []
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> Fleet:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def metrics_text(self, pod: Pod) -> str:
        return httpx.get(pod.url(pod.metrics_port, "/metrics"), timeout=10).text

    def _wait_for_series(self, pod: Pod, prefix: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(line.startswith(prefix) for line in self.metrics_text(pod).splitlines()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{pod.name} exported no {prefix} series in {timeout}s")
            time.sleep(0.3)

    def fail_load_marker(self, pod: Pod) -> Path:
        return self.workdir / pod.name / "fail-load"

    def drive(self, seconds: float, seed: int = 7) -> dict[int, int]:
        """Send the mixed traffic for `seconds`; return how many responses had each status."""
        statuses: dict[int, int] = {}
        lock = threading.Lock()
        stop_at = time.monotonic() + seconds

        def record(status: int) -> None:
            with lock:
                statuses[status] = statuses.get(status, 0) + 1

        def steady(pod: Pod, rng: random.Random) -> None:
            fail_ratio = 0.01 if pod.variant == "stable" else 0.04
            with httpx.Client(timeout=15) as client:
                while time.monotonic() < stop_at:
                    roll = rng.random()
                    order: dict[str, object] = {"ms": rng.uniform(5, 60)}
                    if roll < fail_ratio:
                        order = {"fail": True}
                    elif roll < fail_ratio + 0.06:
                        order = {"ms": 600}
                    record(_predict(client, pod, order))

        def faults(pod: Pod) -> None:
            marker = self.fail_load_marker(pod)
            with httpx.Client(timeout=15) as client:
                marker.touch()
                while (status := _predict(client, pod, {"crash": True})) == 503:
                    time.sleep(0.2)
                record(status)
                self._wait_for_series(pod, "marfleet_model_load_failures_total{", timeout=60)
                marker.unlink()
                while time.monotonic() < stop_at:
                    record(_predict(client, pod, {"crash": True}))
                    for status in _burst(pod, 30, {"ms": 80}):
                        record(status)
                    time.sleep(min(6.0, max(0.0, stop_at - time.monotonic())))

        rng = random.Random(seed)
        threads = [
            threading.Thread(target=steady, args=(pod, random.Random(rng.random())))
            for pod in self.pods
            for _ in range(3)
        ] + [threading.Thread(target=faults, args=(pod,)) for pod in self.pods]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return statuses


def _predict(client: httpx.Client, pod: Pod, order: dict[str, object]) -> int:
    try:
        url = pod.url(pod.inference_port, f"/predictions/{MODEL}")
        return client.post(url, content=json.dumps(order)).status_code
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
