"""The demo's process book with real processes: stopping ends a process and the children it
spawned, and an entry whose pid now belongs to another process is never signalled."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from e2e.demo.processes import Entry, ProcessBook, is_running, session_members

PARENT_WITH_CHILD = (
    "import subprocess, sys, time; "
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
)


def test_stop_all_ends_each_process_and_its_children(tmp_path: Path) -> None:
    book = ProcessBook(tmp_path / "processes.json")
    entry = book.start(
        "parent",
        [sys.executable, "-c", PARENT_WITH_CHILD],
        env=os.environ,
        log=tmp_path / "parent.log",
        cwd=tmp_path,
    )
    assert book.entries() == [entry]
    deadline = time.monotonic() + 30
    while len(session_members(entry)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(session_members(entry)) == 2, "the child process did not start"
    assert book.stop_all(grace=5) == [entry]
    assert session_members(entry) == []  # the parent and its child: gone (or zombies of init)
    assert not book.path.exists()


def test_an_entry_whose_pid_was_reused_is_left_alone(tmp_path: Path) -> None:
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        book = ProcessBook(tmp_path / "processes.json")
        real = book.start(
            "real", ["sleep", "60"], env=os.environ, log=tmp_path / "real.log", cwd=tmp_path
        )
        assert is_running(real)
        # What the book would hold if `bystander` had been given the pid of a process the demo
        # started long ago: same pid, another start time.
        stale = Entry("stale", bystander.pid, 1, "")
        entries = [dataclasses.asdict(e) for e in (real, stale)]
        book.path.write_text(json.dumps(entries))
        assert book.stop_all(grace=5) == [real]
        assert not is_running(real)
        assert bystander.poll() is None
    finally:
        bystander.send_signal(signal.SIGKILL)
        bystander.wait()
