"""The bench harness never leaves a server it gave up on running: a start that fails while
waiting for readiness stops the process (its whole session) before the error goes up, since
`start_all` then tries once more with a fresh server. A real process stands in for a server."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.bench.servers import RunningServer, _wait_ready


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    process = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield RunningServer("stand-in", process, {}, tmp_path)
    process.kill()
    process.wait()


def test_an_error_while_waiting_stops_the_server(server: RunningServer) -> None:
    def broken() -> bool:
        raise KeyError("a check that fails in a way the loop does not expect")

    with pytest.raises(KeyError):
        _wait_ready(server, broken, timeout=5)
    assert server.process.poll() is not None  # stopped, not left running


def test_a_half_written_key_file_is_not_ready_yet(server: RunningServer) -> None:
    calls = []

    def ready() -> bool:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("Expecting value: line 1 column 1 (char 0)")  # json, mid-write
        return True

    _wait_ready(server, ready, timeout=5)
    assert server.process.poll() is None  # ready: still serving


def test_a_timeout_stops_the_server(server: RunningServer) -> None:
    with pytest.raises(TimeoutError, match="not ready within"):
        _wait_ready(server, lambda: False, timeout=0.2)
    assert server.process.poll() is not None
