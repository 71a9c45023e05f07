"""Run a real `marfleet serve` process for a test, and make archives with the real archiver.

    with serve(store, models=["echo=echo.mar"], properties={"enable_model_api": "true"}) as srv:
        httpx.post(f"{srv.inference}/predictions/echo", json={...})
        httpx.get(f"{srv.management}/models", headers=srv.auth)

The server gets free loopback ports, its own working directory (key_file.json lands there)
and its own process group, and is always ended on exit — SIGTERM first, then SIGKILL of the
whole group so no worker outlives a test.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
from google.protobuf import empty_pb2
from marfleet.runtime.server.errors import speaks_kserve
from marfleet.runtime.server.protos import inference_pb2

from e2e.bench.router_procs import limit_open_files
from e2e.support import archiver_command, free_port


def archive(
    export_path: Path,
    name: str,
    handler: Path,
    *,
    version: str = "1.0",
    serialized_file: Path | None = None,
    model_file: Path | None = None,
    config_file: Path | None = None,
    extra_files: Sequence[Path] = (),
) -> Path:
    """Pack a .mar with the real torch-model-archiver; returns its path."""
    command = [*archiver_command(), "--model-name", name, "--version", version]
    command += ["--handler", str(handler)]
    command += ["--export-path", str(export_path), "--force"]
    for flag, path in (
        ("--serialized-file", serialized_file),
        ("--model-file", model_file),
        ("--config-file", config_file),
    ):
        if path is not None:
            command += [flag, str(path)]
    if extra_files:
        command += ["--extra-files", ",".join(str(p) for p in extra_files)]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    return export_path / f"{name}.mar"


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    workdir: Path
    ports: dict[str, int]
    certificate: Path | None = None  # the server's self-signed certificate when it speaks TLS

    @property
    def scheme(self) -> str:
        return "http" if self.certificate is None else "https"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """httpx's `verify=` for this server: trust its own certificate when it speaks TLS."""
        if self.certificate is None:
            return True
        return ssl.create_default_context(cafile=str(self.certificate))

    @property
    def inference(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.ports['inference']}"

    @property
    def management(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.ports['management']}"

    @property
    def metrics(self) -> str:
        return f"http://127.0.0.1:{self.ports['metrics']}"

    @property
    def grpc(self) -> str:
        """host:port of the gRPC inference services."""
        return f"127.0.0.1:{self.ports['grpc']}"

    @property
    def grpc_management(self) -> str:
        """host:port of TorchServe's gRPC management service."""
        return f"127.0.0.1:{self.ports['grpc_management']}"

    @property
    def auth(self) -> dict[str, str]:
        """The management Authorization header (empty when token auth is off)."""
        return self.bearer("management")

    def bearer(self, kind: str) -> dict[str, str]:
        """`Authorization: Bearer <kind key>` from key_file.json (empty when token auth is off);
        kind is management, inference or API. Read each time: keys rotate."""
        key_file = self.workdir / "key_file.json"
        if not key_file.exists():
            return {}
        return {"Authorization": f"Bearer {json.loads(key_file.read_text())[kind]['key']}"}

    def log(self) -> str:
        return (self.workdir / "serve.log").read_text(errors="replace")

    def grpc_health(self) -> Any:
        """TorchServe's gRPC Ping: the health document it answers (a status but OK raises)."""
        with grpc.insecure_channel(self.grpc) as channel:
            reply = channel.unary_unary(
                "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Ping",
                request_serializer=empty_pb2.Empty.SerializeToString,
                response_deserializer=inference_pb2.TorchServeHealthResponse.FromString,
            )(empty_pb2.Empty(), timeout=10)
        return json.loads(reply.health)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait; returns the exit code (SIGKILLs the group if it hangs)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.wait()

    def kill(self) -> None:
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


@contextmanager
def serve(
    model_store: Path,
    workdir: Path,
    *,
    models: Sequence[str] = (),
    properties: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 90,
    tls: tuple[Path, Path] | None = None,
    inference_port: int | None = None,
    healthy: bool = True,
    open_files: tuple[int, int] | None = None,
) -> Iterator[Server]:
    """Start `marfleet serve --foreground`, wait until /ping is healthy (with `healthy=False`:
    until it answers at all), always end it.

    Like the operator's pods, the inference API needs no token unless `properties` says
    `disable_inference_token_authorization=false`; the management API needs its key.
    `inference_port`: a port chosen beforehand, for a caller that must name the URL early.
    `open_files`: the (soft, hard) open-file limit it starts with.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    names = ("inference", "management", "metrics", "grpc", "grpc_management")
    ports = {name: free_port() for name in names}
    if inference_port is not None:
        ports["inference"] = inference_port
    settings = {
        f"{name}_address": f"http://127.0.0.1:{ports[name]}"
        for name in ("inference", "management", "metrics")
    }
    settings["grpc_inference_port"] = str(ports["grpc"])
    settings["grpc_management_port"] = str(ports["grpc_management"])
    if tls is not None:  # (certificate, key): HTTPS on inference and management, gRPC over TLS
        for name in ("inference", "management"):
            settings[f"{name}_address"] = f"https://127.0.0.1:{ports[name]}"
        settings["certificate_file"], settings["private_key_file"] = str(tls[0]), str(tls[1])
        settings["enable_grpc_ssl"] = "true"
    settings["disable_inference_token_authorization"] = "true"
    settings.update(properties or {})
    config = workdir / "config.properties"
    config.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
    command = [sys.executable, "-m", "marfleet.runtime.cli", "serve", "--foreground"]
    command += ["--model-store", str(model_store), "--ts-config", str(config)]
    if models:
        command += ["--models", *models]
    scratch = workdir / "tmp"
    scratch.mkdir(exist_ok=True)
    with (workdir / "serve.log").open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            # its own TMPDIR: what it unpacks stays in the test's directory even if it is killed
            env={**os.environ, "TMPDIR": str(scratch), **(env or {})},
            start_new_session=True,
            preexec_fn=None if open_files is None else lambda: limit_open_files(open_files),
        )
    server = Server(process, workdir, ports, None if tls is None else tls[0])
    try:
        _wait_healthy(server, ready_timeout, statuses=(200,) if healthy else (200, 500))
        yield server
    finally:
        if process.poll() is None:
            server.stop()
        server.kill()


def _wait_healthy(server: Server, timeout: float, statuses: tuple[int, ...] = (200,)) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"marfleet serve exited early:\n{server.log()[-4000:]}")
        try:
            ping = httpx.get(
                f"{server.inference}/ping",
                headers=server.bearer("inference"),
                timeout=2,
                verify=server.verify,
            )
            if ping.status_code in statuses:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"marfleet serve was not healthy in {timeout} s:\n{server.log()[-4000:]}")


def without_kserve_error(path: str, body: Any, raw: bytes) -> tuple[Any, bytes]:
    """A marfleet answer as TorchServe would write it: the `"error"` marfleet adds to error
    bodies on KServe's paths taken out of the parsed body and of the bytes, after checking
    that it repeats `message` (docs/moving-from-torchserve.md), for the differential tests."""
    if not (speaks_kserve(path) and isinstance(body, dict) and "error" in body):
        return body, raw
    assert body["error"] == body.get("message"), body
    added = b',\n  "error": ' + json.dumps(body["error"]).encode()
    assert added in raw, raw
    return {key: value for key, value in body.items() if key != "error"}, raw.replace(added, b"")
