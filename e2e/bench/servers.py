"""Start, configure and stop the two servers under test with identical settings.

Both get the same config.properties (loopback ports, no token, model API on, a 1000-deep
queue), the same model store, one worker per model unless registered with more, and the same
torch/OpenMP threads per worker (one unless asked; marfleet's `worker_threads`, TorchServe's
OMP_NUM_THREADS, which is what its workers' torch reads); each runs in its own session so
stopping it takes every worker with it. TorchServe is started as `python -m ts.model_server`
(its console script's module), so it also runs where it was installed with `pip --target`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from e2e.bench.procs import free_port


def thread_env(threads: int) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


@dataclass
class RunningServer:
    name: str
    process: subprocess.Popen[bytes]
    ports: dict[str, int]
    workdir: Path

    def url(self, api: str) -> str:
        return f"http://127.0.0.1:{self.ports[api]}"

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time so far of the frontend (the process that listens) and of all workers."""
        root = psutil.Process(self.process.pid)
        processes = [root, *root.children(recursive=True)]
        frontend = 0.0
        workers = 0.0
        for proc in processes:
            with suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                used = times.user + times.system
                if _is_worker(proc):
                    workers += used
                else:
                    frontend += used
        return {"frontend": frontend, "workers": workers}

    def register(
        self, url: str, name: str, batch_size: int, max_batch_delay: int, workers: int = 1
    ) -> None:
        response = httpx.post(
            f"{self.url('management')}/models",
            params={
                "url": url,
                "model_name": name,
                "batch_size": batch_size,
                "max_batch_delay": max_batch_delay,
                "initial_workers": workers,
                "synchronous": "true",
            },
            timeout=300,
        )
        if response.status_code != 200:
            raise RuntimeError(f"{self.name}: registering {name} failed: {response.text}")

    def stop(self) -> None:
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            self.process.wait(60)
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def _is_worker(proc: psutil.Process) -> bool:
    command = " ".join(proc.cmdline())
    return "model_service_worker" in command or "worker_main" in command


def start(
    name: str,
    store: Path,
    workdir: Path,
    threads: int = 1,
    *,
    extra: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> RunningServer:
    """Start `name` (marfleet or torchserve); `extra` config.properties lines, `env` on top."""
    workdir.mkdir(parents=True, exist_ok=True)
    ports = {api: free_port() for api in ("inference", "management", "metrics")}
    config = workdir / "config.properties"
    lines = [f"{api}_address=http://127.0.0.1:{port}" for api, port in ports.items()]
    lines += [
        f"model_store={store}",
        "disable_token_authorization=true",
        "enable_model_api=true",
        "default_workers_per_model=1",
        "job_queue_size=1000",
        *extra,
    ]
    if name == "marfleet":
        lines.append(f"worker_threads={threads}")
        command = [sys.executable, "-m", "marfleet.runtime.cli", "serve", "--foreground"]
    else:
        command = [sys.executable, "-m", "ts.model_server", "--start", "--foreground", "--ncs"]
    config.write_text("\n".join(lines) + "\n")
    command += ["--model-store", str(store), "--ts-config", str(config)]
    with (workdir / "server.log").open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                **thread_env(threads),
                "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                **(env or {}),
            },
            start_new_session=True,
        )
    server = RunningServer(name, process, ports, workdir)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited; see {workdir / 'server.log'}")
        with suppress(httpx.TransportError):
            if httpx.get(f"{server.url('inference')}/ping", timeout=2).status_code == 200:
                return server
        time.sleep(0.5)
    server.stop()
    raise TimeoutError(f"{name} did not answer /ping within 180 s; see {workdir / 'server.log'}")
