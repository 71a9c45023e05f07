"""The processes the demo leaves running, written down so that any later process can end them.

`python -m e2e.demo up` exits while the operator, router, model servers and Prometheus keep
running; `python -m e2e.demo down` (another process, maybe days later) must find exactly those
and nothing else. Each entry records the pid and the process's start time from /proc, so a pid
the kernel has since given to an unrelated program is never signalled. Every process starts
in a session of its own, so stopping it also reaches the children it spawned (the model
servers' worker processes) by their session id.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Entry:
    name: str
    pid: int
    start_ticks: int  # field 22 of /proc/<pid>/stat: when the process started
    log: str


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name, or None if there is no such pid."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def start_ticks(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def _reap(pid: int) -> None:
    """Collect the exit status when the process is our own child (after Ctrl-C in `up`)."""
    with suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def is_running(entry: Entry) -> bool:
    _reap(entry.pid)
    fields = _stat(entry.pid)
    return fields is not None and fields[0] != "Z" and int(fields[19]) == entry.start_ticks


def session_members(entry: Entry) -> list[int]:
    """Live processes in the entry's session: the process itself and what it spawned.

    A session id cannot be handed out again while any process still carries it, so members
    are ours unless the leader's pid now belongs to a different, newer process.
    """
    leader = start_ticks(entry.pid)
    if leader is not None and leader != entry.start_ticks:
        return []
    members = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        fields = _stat(int(proc.name))
        if fields is not None and fields[0] != "Z" and int(fields[3]) == entry.pid:
            members.append(int(proc.name))
    return members


class ProcessBook:
    """A JSON file of started processes, rewritten after every start."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def entries(self) -> list[Entry]:
        if not self.path.exists():
            return []
        return [Entry(**item) for item in json.loads(self.path.read_text())]

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        log: Path,
        cwd: Path,
    ) -> Entry:
        """Start `argv` in a new session, output to `log`, and record it before returning."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as output:
            process = subprocess.Popen(
                list(argv),
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        ticks = start_ticks(process.pid)
        entry = Entry(name, process.pid, ticks if ticks is not None else -1, str(log))
        self._write([*self.entries(), entry])
        return entry

    def stop_all(self, grace: float = 20.0) -> list[Entry]:
        """SIGTERM every recorded session, SIGKILL what is left after `grace`; forget them all.

        Returns the entries that were still running.
        """
        running = [e for e in self.entries() if session_members(e)]
        for entry in running:
            if is_running(entry):
                with suppress(ProcessLookupError):
                    os.kill(entry.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(is_running(e) for e in running):
            time.sleep(0.1)
        for entry in running:
            for pid in session_members(entry):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(session_members(e) for e in running):
            for entry in running:
                _reap(entry.pid)
            time.sleep(0.05)
        left = {e.name: session_members(e) for e in running if session_members(e)}
        if left:
            raise RuntimeError(f"processes survived SIGKILL (pids by name): {left}")
        self.path.unlink(missing_ok=True)
        return running

    def _write(self, entries: list[Entry]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps([asdict(e) for e in entries], indent=2))
        partial.replace(self.path)
