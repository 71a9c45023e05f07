"""Small helpers every process-level test and tool here needs: a free loopback port, polling a
condition with a deadline that names what it was waiting for, and stopping a child process."""

from __future__ import annotations

import importlib.util
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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
