"""The scenario's model archives: built by TorchServe's own `torch-model-archiver` and served
over plain HTTP from the host, the way a team's artifact server would serve them: the demo's
classifier (two versions) and TorchServe's MNIST example (a grayscale image handler).

The server binds the host end of the real node's link, the one address both the host and
the pods reach; the operator's init container (`marfleet fetch`) downloads from it.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from e2e.support import Started

REPO = Path(__file__).resolve().parents[2]
BUILDER = REPO / "examples" / "demo" / "build.py"
MODEL = "classifier"
MNIST_BUILDER = REPO / "examples" / "mnist" / "build.py"
MNIST = "mnist"


def build(out: Path, version: str, seed: int) -> Path:
    """`<out>/<MODEL>-<version>.mar`, random weights seeded by `seed`."""
    scratch = out / version
    subprocess.run(
        [
            sys.executable,
            str(BUILDER),
            *("--out", str(scratch), "--version", version, "--seed", str(seed)),
            *("--archiver", "torch-model-archiver"),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    archive = out / f"{MODEL}-{version}.mar"
    (scratch / f"{MODEL}.mar").replace(archive)
    scratch.rmdir()
    return archive


def build_mnist(out: Path, seed: int = 1) -> tuple[Path, Path]:
    """(`<out>/mnist.mar`, `<out>/digit.png`): TorchServe's MNIST example with random weights
    seeded by `seed`, and the 28x28 grayscale PNG to send it."""
    subprocess.run(
        [sys.executable, str(MNIST_BUILDER), "--out", str(out), "--seed", str(seed)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out / f"{MNIST}.mar", out / "digit.png"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Downloads are not news; errors still reach the caller as HTTP statuses."""


class ArchiveServer(Started):
    """Serves the files of `directory` on http://<host>:<port>/."""

    def __init__(self, directory: Path, host: str) -> None:
        self.directory, self.host = directory, host
        self._server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the archive server is not started")
        return f"http://{self.host}:{self._server.server_address[1]}"

    def start(self) -> None:
        handler = functools.partial(_QuietHandler, directory=str(self.directory))
        self._server = ThreadingHTTPServer((self.host, 0), handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
