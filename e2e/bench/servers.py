"""Start, configure and stop the servers under test with identical settings.

Both get the same config.properties (loopback ports, model API on, a 1000-deep queue; token
authorization on as both ship it, or off where a caller asks), the same model store, one worker
per model unless registered with more, and the same torch/OpenMP threads per worker (one unless
asked; marfleet's `worker_threads`, TorchServe's OMP_NUM_THREADS, which is what its workers'
torch reads); each runs in its own session so stopping it takes every worker with it.
TorchServe is started as `python -m ts.model_server` (its console script's module), so it also
runs where it was installed with `pip --target`.

The peers (KServe, Ray Serve, LitServe) run `e2e.bench.peer_apps` under the peer venv's python
on one loopback port, with the same thread limits, and are ready once every model answers its
request. `Request` says what each server is sent for a model: its URL path and body format.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from e2e.bench.procs import free_port

MAR_SERVERS = ("marfleet", "torchserve")
PEERS = ("kserve", "ray", "litserve")
MODELS = ("mlp", "resnet_b1", "resnet_b8")


@dataclass(frozen=True)
class Request:
    """What a server is sent for one model: URL path, body and its content type."""

    path: str
    body: bytes
    content_type: str


def request_for(server: str, model: str, mlp_row: bytes, jpeg: bytes) -> Request:
    """Each server's documented request for the same input (`mlp_row`: a JSON array of 16).

    marfleet, TorchServe and Ray Serve take the raw body; KServe's v1 protocol wraps inputs in
    `instances` (an image as `{"b64": ...}`); LitServe's examples send a JSON object with the
    image base64-encoded.
    """
    image = model != "mlp"
    raw, raw_type = (jpeg, "image/jpeg") if image else (mlp_row, "application/json")
    encoded = base64.b64encode(jpeg).decode()
    if server in MAR_SERVERS:
        return Request(f"/predictions/{model}", raw, raw_type)
    if server == "ray":
        return Request(f"/{model}", raw, raw_type)
    if server == "kserve":
        instance = {"image": {"b64": encoded}} if image else json.loads(mlp_row)
        body = json.dumps({"instances": [instance]}).encode()
        return Request(f"/v1/models/{model}:predict", body, "application/json")
    if server == "litserve":
        payload = {"image": encoded} if image else {"input": json.loads(mlp_row)}
        return Request(f"/{model}", json.dumps(payload).encode(), "application/json")
    raise ValueError(f"unknown server {server!r}: expected one of {MAR_SERVERS + PEERS}")


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

    def bearer(self, kind: str) -> dict[str, str]:
        """`Authorization: Bearer <kind key>` from the key_file.json the server wrote in its
        working directory (marfleet and TorchServe alike); empty when token auth is off."""
        key_file = self.workdir / "key_file.json"
        if not key_file.exists():
            return {}
        return {"Authorization": f"Bearer {json.loads(key_file.read_text())[kind]['key']}"}

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
            headers=self.bearer("management"),
            timeout=300,
        )
        if response.status_code != 200:
            raise RuntimeError(f"{self.name}: registering {name} failed: {response.text}")

    def _processes(self) -> list[psutil.Process]:
        """The server's process and every descendant, including those that left its session."""
        with suppress(psutil.NoSuchProcess):
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        return []

    def _signal_all(self, signum: int) -> None:
        for proc in self._processes():
            with suppress(psutil.NoSuchProcess):
                proc.send_signal(signum)

    def pause(self) -> None:
        """Freeze every process of the server (SIGSTOP) while another one is measured: idle,
        Ray's head and LitServe's polling workers still take a tenth to a quarter of a core,
        which on a small machine would come out of whichever server is under load."""
        self._signal_all(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_all(signal.SIGCONT)

    def stop(self) -> None:
        """Stop the server's session, then any descendant that left it (Ray's workers do)."""
        self.resume()  # a frozen process would hold SIGTERM until continued
        descendants = self._processes()[1:]
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            self.process.wait(60)
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        for child in descendants:
            with suppress(psutil.NoSuchProcess):
                child.kill()


def _is_worker(proc: psutil.Process) -> bool:
    """A process that runs a model (the rest is the frontend: HTTP, routing, batching)."""
    command = " ".join(proc.cmdline())
    # marfleet, TorchServe, Ray Serve replicas, LitServe's inference workers (spawned processes)
    markers = ("model_service_worker", "worker_main", "ServeReplica", "multiprocessing.spawn")
    return any(marker in command for marker in markers)


def _popen(
    command: list[str], workdir: Path, threads: int, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with (workdir / "server.log").open("wb") as log:
        return subprocess.Popen(
            command,
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                **thread_env(threads),
                "PATH": f"{Path(command[0]).parent}:{os.environ['PATH']}",
                **(env or {}),
            },
            start_new_session=True,
        )


def _log_tail(server: RunningServer, chars: int = 1500) -> str:
    """The end of the server's log, for an error that would otherwise only name the file (a
    temporary directory, gone by the time anyone reads the report)."""
    with suppress(OSError):
        return (server.workdir / "server.log").read_text(errors="replace")[-chars:]
    return "(no log)"


def _wait_ready(server: RunningServer, ready: Callable[[], bool], timeout: float) -> None:
    """Return once `ready()`; otherwise, however waiting ends (an exit, the timeout, an
    interrupt), the server is stopped before the error goes up: a caller that tries again must
    not leave the first server running."""
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(
                    f"{server.name} exited with {server.process.returncode}; the end of "
                    f"{server.workdir / 'server.log'}:\n{_log_tail(server)}"
                )
            # ValueError: a key_file.json read while the server is still writing it
            with suppress(httpx.TransportError, ValueError):
                if ready():
                    return
            time.sleep(0.5)
        raise TimeoutError(
            f"{server.name} was not ready within {timeout:.0f} s; the end of "
            f"{server.workdir / 'server.log'}:\n{_log_tail(server)}"
        )
    except BaseException:
        server.stop()
        raise


def start_peer(
    name: str,
    python: Path,
    weights: dict[str, Path],
    requests: dict[str, Request],
    workdir: Path,
    threads: int = 1,
    timeout: float = 300,
) -> RunningServer:
    """`name` (a PEERS entry) serving the three models; ready when each answers `requests`."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [str(python), "-m", "e2e.bench.peer_apps", "--server", name, "--port", str(port)]
    command += ["--mlp", str(weights["mlp"]), "--resnet", str(weights["resnet18"])]
    server = RunningServer(name, _popen(command, workdir, threads), {"inference": port}, workdir)

    def answers() -> bool:
        return all(
            httpx.post(
                server.url("inference") + request.path,
                content=request.body,
                headers={"Content-Type": request.content_type},
                timeout=30,
            ).status_code
            == 200
            for request in requests.values()
        )

    _wait_ready(server, answers, timeout)
    return server


def start(
    name: str,
    store: Path,
    workdir: Path,
    threads: int = 1,
    *,
    extra: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    token_auth: bool = False,
) -> RunningServer:
    """Start `name` (marfleet or torchserve); `extra` config.properties lines, `env` on top;
    `token_auth` leaves TorchServe's token authorization on (both servers' default), and the
    caller sends `RunningServer.bearer(...)`."""
    workdir.mkdir(parents=True, exist_ok=True)
    ports = {api: free_port() for api in ("inference", "management", "metrics", "grpc")}
    config = workdir / "config.properties"
    lines = [
        f"{api}_address=http://127.0.0.1:{ports[api]}"
        for api in ("inference", "management", "metrics")
    ]
    lines += [
        f"grpc_inference_port={ports['grpc']}",
        f"grpc_management_port={free_port()}",  # both serve TorchServe's management service
        f"model_store={store}",
        f"disable_token_authorization={str(not token_auth).lower()}",
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
        # TorchServe refuses to start when it finds another's pid file in $TMPDIR (the
        # machine is shared): give it its own; $TEMP is where it unpacks models (the JVM's
        # java.io.tmpdir, else /tmp, where they would stay).
        (workdir / "tmp").mkdir(exist_ok=True)
        env = {"TMPDIR": str(workdir / "tmp"), "TEMP": str(workdir / "tmp"), **(env or {})}
    config.write_text("\n".join(lines) + "\n")
    command += ["--model-store", str(store), "--ts-config", str(config)]
    server = RunningServer(name, _popen(command, workdir, threads, env), ports, workdir)

    def pings() -> bool:
        ping = f"{server.url('inference')}/ping"
        return httpx.get(ping, headers=server.bearer("inference"), timeout=2).status_code == 200

    _wait_ready(server, pings, 180)
    return server
