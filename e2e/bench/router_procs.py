"""Start `marfleet router` and stand-in upstreams as real processes; a lean sequential client.

Shared by the router's integration tests and its benchmark. Every process gets its own process
group and is killed (group and all) when its context ends, so none outlives a test.

    with upstream("stable") as a, upstream("canary") as b:
        with router({"stable": a.url, "canary": b.url}, "--weights", "stable=90,canary=10") as r:
            Client(r.url).request("POST", "/predictions/m", b"{}")
"""

from __future__ import annotations

import http.client
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from e2e.bench.procs import free_port

ROUTER_COMMAND = (sys.executable, "-m", "marfleet.runtime.cli", "router")


@dataclass
class Proc:
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    metrics_port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM, wait, then SIGKILL the group; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.wait()


def _wait_listening(proc: Proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.process.poll() is not None:
            raise RuntimeError(
                f"process exited early ({proc.process.returncode}):\n{proc.log_tail()}"
            )
        try:
            connection = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=1)
            connection.connect()
            connection.close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listened on port {proc.port} in {timeout} s:\n{proc.log_tail()}")


def limit_open_files(limits: tuple[int, int]) -> None:
    """(In a child before exec) set its (soft, hard) open-file limit."""
    resource.setrlimit(resource.RLIMIT_NOFILE, limits)


def open_file_limits(pid: int) -> tuple[int, int]:
    """The (soft, hard) open-file limit process `pid` runs with."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise LookupError(f"no open-file limit in /proc/{pid}/limits")


@contextmanager
def _started(
    command: Sequence[str],
    port: int,
    metrics_port: int,
    env: Mapping[str, str] | None,
    open_files: tuple[int, int] | None = None,
) -> Iterator[Proc]:
    log = Path(tempfile.mkstemp(prefix="marfleet-router-", suffix=".log")[1])
    with log.open("wb") as out:
        process = subprocess.Popen(
            list(command),
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            preexec_fn=None if open_files is None else lambda: limit_open_files(open_files),
        )
    proc = Proc(process, port, log, metrics_port)
    try:
        _wait_listening(proc, timeout=60)
        yield proc
    finally:
        proc.stop()
        log.unlink(missing_ok=True)


@contextmanager
def upstream(name: str, *, delay_ms: float = 0) -> Iterator[Proc]:
    """The stand-in variant of `e2e.bench.router_upstream`, answering as `name`."""
    port = free_port()
    command = [sys.executable, "-m", "e2e.bench.router_upstream", "--name", name]
    command += ["--port", str(port), "--delay-ms", str(delay_ms)]
    with _started(command, port, 0, None) as proc:
        yield proc


@contextmanager
def router(
    backends: Mapping[str, str],
    *args: str,
    env: Mapping[str, str] | None = None,
    metrics_port: int | None = None,
    open_files: tuple[int, int] | None = None,
) -> Iterator[Proc]:
    """`marfleet router` on loopback with `--backend` per variant and the extra `args`;
    ready once its inference port listens (in watch mode: once it has weights).
    `open_files`: the (soft, hard) open-file limit it starts with."""
    port = free_port()
    metrics_port = metrics_port or free_port()
    command = [*ROUTER_COMMAND, "--host", "127.0.0.1", "--port", str(port)]
    command += ["--metrics-port", str(metrics_port)]
    command += [f"--backend={name}={url}" for name, url in backends.items()]
    with _started([*command, *args], port, metrics_port, env, open_files) as proc:
        yield proc


class Client:
    """One keep-alive connection, one request at a time: the order of answers is the order
    in which the router picked variants."""

    def __init__(self, url: str, timeout: float = 30) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self._connection = http.client.HTTPConnection(host, int(port), timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        self._connection.request(method, path, body=body, headers=dict(headers or {}))
        response = self._connection.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data

    def close(self) -> None:
        self._connection.close()


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` in Prometheus text whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, value = line.rsplit(" ", 1)
        metric_name, _, label_text = head.partition("{")
        if metric_name == name and all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            total += float(value)
    return total
