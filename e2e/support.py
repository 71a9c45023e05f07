"""Small helpers every process-level test and tool here needs: a free loopback port, polling a
condition with a deadline that names what it was waiting for, and stopping a child process."""

from __future__ import annotations

import importlib.util
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

PORTS = range(15000, 30000)
"""Where free_port looks: below Linux's ephemeral range (32768-60999 by default), from which
the kernel takes the local port of every outgoing connection, and below the NodePort range
(30000-32767). A port taken from the ephemeral range (bind to port 0) is free when chosen, but
a client connecting before the server binds it may be given it as its own port: the server
then fails with "address already in use" (seen in CI)."""
_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port nothing listens on right now, never handed out before by this process, and
    outside the range the kernel gives outgoing connections (PORTS says why)."""
    for _ in range(200):
        port = random.choice(PORTS)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))  # also taken when bound on any one address
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free TCP port in {PORTS.start}-{PORTS.stop - 1} after 200 tries")


def archiver_command() -> list[str]:
    """The real torch-model-archiver, run as its module under this Python: that also works
    where it was installed with `pip --target` (no console scripts), as on a GPU machine."""
    if importlib.util.find_spec("model_archiver") is None:
        raise FileNotFoundError(
            "torch-model-archiver is not installed for this Python: run `make setup` (dev extra)"
        )
    return [sys.executable, "-m", "model_archiver.model_packaging"]


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    """Call `check` until it returns something truthy and return that; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def terminate(process: subprocess.Popen[bytes], grace: float = 30) -> None:
    """SIGTERM, then SIGKILL if it is still running after `grace` seconds; always reaped."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Started:
    """`with thing:` for the test services here: `start()` on entry, `stop()` on exit."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
