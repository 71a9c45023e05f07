"""The real TorchServe 0.12 tools, driven from tests: the archiver, the server, and a Python
in which TorchServe's `ts` package cannot be found.

The dev environment installs `torch-model-archiver` and `torchserve` (Java 17 for the server);
a missing tool fails the test loudly. `TorchServe` runs one server on free loopback ports with
its pid file, logs and scratch files in a private folder, so it never meets another instance,
and `stop()` always leaves no process behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import httpx

from e2e.support import free_port

VENV_BIN = Path(sys.executable).parent
STARTUP_TIMEOUT_S = 180.0


def tool(name: str) -> Path:
    path = VENV_BIN / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make setup` (the dev extra installs it)")
    return path


def torch_model_archiver(*args: str | Path, cwd: Path | None = None) -> None:
    """Run the real torch-model-archiver; its stderr is in the error when it fails."""
    done = subprocess.run(
        [str(tool("torch-model-archiver")), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"torch-model-archiver {' '.join(map(str, args))} failed:\n{done.stderr}"
        )


def python_without_torchserve(scratch: Path) -> list[str]:
    """A command prefix: this venv's Python with every installed package but TorchServe's.

    The venv's site-packages is mirrored by symlinks, less `ts` and torchserve's metadata, and
    added with `site.addsitedir` (so .pth files, marfleet's editable install included, work).
    """
    site_packages = Path(sysconfig.get_paths()["purelib"])
    mirror = scratch / "site-packages-without-ts"
    mirror.mkdir(parents=True)
    for entry in site_packages.iterdir():
        if entry.name == "ts" or entry.name.lower().startswith("torchserve"):
            continue
        (mirror / entry.name).symlink_to(entry)
    bootstrap = f"import site, sys; site.addsitedir({str(mirror)!r}); sys.argv = sys.argv[1:]; "
    bootstrap += "import runpy; runpy.run_path(sys.argv[0], run_name='__main__')"
    return [sys.executable, "-S", "-c", bootstrap]


class TorchServe:
    """One real TorchServe serving the archives in `model_store`, one CPU worker per model.

    Every port (HTTP and gRPC), the pid file, the worker sockets and the extracted models are
    its own, so it runs beside any other TorchServe on the machine.
    """

    def __init__(
        self,
        home: Path,
        model_store: Path,
        models: dict[str, str],
        *,
        token_auth: bool = False,
        properties: dict[str, str] | None = None,
    ) -> None:
        self.home = home
        self.model_store = model_store
        self.models = models
        self.token_auth = token_auth
        self.properties = properties or {}
        self.inference = f"http://127.0.0.1:{free_port()}"
        self.management = f"http://127.0.0.1:{free_port()}"
        self.metrics = f"http://127.0.0.1:{free_port()}"
        self.grpc = f"127.0.0.1:{free_port()}"  # its gRPC inference port
        self.grpc_management = f"127.0.0.1:{free_port()}"  # its gRPC management port
        self.process: subprocess.Popen[bytes] | None = None
        self.env = {
            **os.environ,
            "TMPDIR": str(home / "tmp"),  # where `torchserve --stop` finds its pid file
            "LOG_LOCATION": str(home / "logs"),
            "METRICS_LOCATION": str(home / "logs"),
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "TS_DISABLE_SYSTEM_METRICS": "true",
        }

    def start(self) -> None:
        (self.home / "tmp").mkdir(parents=True, exist_ok=True)
        config = self.home / "config.properties"
        config.write_text(
            f"inference_address={self.inference}\n"
            f"management_address={self.management}\n"
            f"metrics_address={self.metrics}\n"
            f"grpc_inference_port={self.grpc.rsplit(':', 1)[1]}\n"  # gRPC always starts
            f"grpc_management_port={self.grpc_management.rsplit(':', 1)[1]}\n"
            "default_workers_per_model=1\n"
            "install_py_dep_per_model=false\n"
            "disable_system_metrics=true\n"
            f"vmargs=-Xmx512m -XX:+UseSerialGC -Djava.io.tmpdir={self.home / 'tmp'}\n"
            + "".join(f"{key}={value}\n" for key, value in self.properties.items())
        )
        command = [
            str(tool("torchserve")), "--start", "--foreground", "--ncs",
            "--model-store", str(self.model_store), "--ts-config", str(config),
            "--models", *(f"{name}={file}" for name, file in self.models.items()),
        ]  # fmt: skip
        if not self.token_auth:
            command.append("--disable-token-auth")
        log = (self.home / "torchserve.out").open("wb")
        self.process = subprocess.Popen(
            command, cwd=self.home, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        waiting = set(self.models)
        while waiting and time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"TorchServe exited early; see {self.home / 'torchserve.out'}")
            for name in sorted(waiting):
                if self._worker_ready(name):
                    waiting.discard(name)
            time.sleep(0.5)
        if waiting:
            raise RuntimeError(
                f"TorchServe workers for {sorted(waiting)} not ready after {STARTUP_TIMEOUT_S}s; "
                f"see {self.home / 'logs'}"
            )

    def keys(self) -> dict[str, str]:
        """type -> key from the key_file.json TorchServe wrote in its working directory."""
        document = json.loads((self.home / "key_file.json").read_text())
        return {kind: entry["key"] for kind, entry in document.items()}

    def bearer(self, kind: str) -> dict[str, str]:
        """The Authorization header with the `kind` key (none when token auth is off)."""
        return {"Authorization": f"Bearer {self.keys()[kind]}"} if self.token_auth else {}

    def _worker_ready(self, name: str) -> bool:
        try:
            described = httpx.get(
                f"{self.management}/models/{name}", headers=self.bearer("management"), timeout=5
            ).json()
        except (httpx.HTTPError, ValueError, OSError, KeyError):  # key file not written yet
            return False
        workers = described[0].get("workers", []) if isinstance(described, list) else []
        return any(worker.get("status") == "READY" for worker in workers)

    def post(
        self,
        path: str,
        content: bytes = b"",
        headers: dict[str, str] | None = None,
        files: dict[str, tuple[str, bytes, str]] | None = None,
        data: dict[str, str] | None = None,
    ) -> httpx.Response:
        return httpx.post(
            f"{self.inference}{path}",
            content=content or None,
            headers=headers,
            files=files,
            data=data,
            timeout=60,
        )

    def stop(self) -> None:
        if self.process is None:
            return
        subprocess.run(
            [str(tool("torchserve")), "--stop"], env=self.env, capture_output=True, timeout=60,
            check=False,
        )  # fmt: skip
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.process = None
        shutil.rmtree(self.home / "tmp", ignore_errors=True)
