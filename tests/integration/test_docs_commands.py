"""The shell blocks README and docs mark `runnable` work as written.

Each runs in a fresh directory that holds only a link to the repository's examples/, with the
virtualenv first on PATH: a reader who ran `make setup` and activated it, in a clone. Whatever a
block starts in the background it must stop itself; a server it leaves behind fails the test
(and is killed).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from e2e.docs import blocks

RUNNABLE = blocks.marked(blocks.RUNNABLE)
VENV_BIN = Path(sys.executable).parent
TORCHSERVE_PORTS = (8080, 8081, 8082)
LAPTOP_ANSWER = '{\n  "label": "setosa",\n  "probability": 0.395,\n  "model_version": "1.0"\n}'


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def left_running(workdir: Path) -> int | None:
    """The pid of a background `marfleet serve` the block did not stop, if any."""
    pid_file = workdir / "marfleet.pid"
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def test_the_readme_has_a_runnable_laptop_quickstart() -> None:
    names = [m.name for m in RUNNABLE]
    assert any(name.startswith("README.md:") for name in names), names


@pytest.mark.parametrize("marked", RUNNABLE, ids=lambda m: m.name)
def test_runnable_block(marked: blocks.Marked, tmp_path: Path) -> None:
    busy = [port for port in TORCHSERVE_PORTS if listening(port)]
    assert not busy, f"ports {busy} are taken; the documented commands use TorchServe's defaults"
    (tmp_path / "examples").symlink_to(blocks.REPO / "examples")
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    result = blocks.run(marked, tmp_path, env, timeout=240)
    leftover = left_running(tmp_path)
    if leftover is not None:
        os.killpg(leftover, signal.SIGKILL)
    output = f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    assert result.returncode == 0, output
    assert leftover is None, f"the block left marfleet serve (pid {leftover}) running"
    if marked.page.name == "README.md":  # the laptop quickstart quotes the answer it gets
        assert LAPTOP_ANSWER in result.stdout, output
        assert "".join(LAPTOP_ANSWER.split()) in "".join(marked.page.read_text().split())
