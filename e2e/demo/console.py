"""What the demo prints: numbered steps, the commands it runs, a progress display while it waits,
and bar charts of the traffic split.

Everything goes to one stream. The progress line is redrawn in place only on a terminal; in a
log or a test the same wait prints one line per finished item, so output stays readable both
ways. Probes are plain callables, so a wait can combine the apiserver, local processes and
HTTP endpoints.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TextIO

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
BAR_WIDTH = 40


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and where to look."""


@dataclass(frozen=True)
class Probe:
    done: bool
    detail: str = ""


@dataclass(frozen=True)
class Check:
    label: str
    probe: Callable[[], Probe]


class Console:
    def __init__(self, stream: TextIO, total_steps: int) -> None:
        self.stream = stream
        self.total_steps = total_steps
        self.interactive = stream.isatty()
        self._step = 0

    def say(self, text: str = "") -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def step(self, title: str) -> None:
        self._step += 1
        self.say(f"\n[{self._step}/{self.total_steps}] {title}")

    def line(self, text: str) -> None:
        self.say(f"    {text}")

    def command(self, argv: Sequence[str]) -> None:
        self.line(f"$ {shlex.join(argv)}")

    def block(self, text: str) -> None:
        for row in text.rstrip().splitlines():
            self.line(row)

    def wait(self, checks: Sequence[Check], timeout: float, poll: float = 0.5) -> None:
        """Probe until every check is done, printing each as it finishes; DemoError on timeout."""
        started = time.monotonic()
        pending = list(checks)
        last: dict[str, str] = {}
        frame = 0
        while pending:
            for check in list(pending):
                result = _safe(check.probe)
                last[check.label] = result.detail
                if result.done:
                    pending.remove(check)
                    self._clear()
                    elapsed = time.monotonic() - started
                    detail = f"  {result.detail}" if result.detail else ""
                    self.line(f"✓ {check.label}{detail}  ({elapsed:.1f} s)")
            if not pending:
                return
            elapsed = time.monotonic() - started
            if elapsed > timeout:
                self._clear()
                waiting = "; ".join(f"{c.label}: {last.get(c.label) or '?'}" for c in pending)
                raise DemoError(f"still waiting after {timeout:.0f} s for {waiting}")
            if self.interactive:
                names = ", ".join(c.label for c in pending)
                status = (
                    f"    {SPINNER[frame % len(SPINNER)]} waiting for {names} ({elapsed:.0f} s)"
                )
                self.stream.write("\r" + status[:120].ljust(120))
                self.stream.flush()
                frame += 1
            time.sleep(poll)

    def split(self, counts: Mapping[str, int], weights: Mapping[str, int]) -> None:
        """One bar per variant: requests it answered, their share, and the weight asked for."""
        total = sum(counts.values()) or 1
        width = max(len(name) for name in weights)
        for name, weight in weights.items():
            count = counts.get(name, 0)
            bar = "█" * round(BAR_WIDTH * count / total)
            share = 100 * count / total
            self.line(
                f"{name:<{width}}  {bar:<{BAR_WIDTH}}  {count:>4} answers  "
                f"{share:5.1f} %  (weight {weight})"
            )
        others = {k: v for k, v in counts.items() if k not in weights}
        if others:
            self.line(f"answered by variants without a weight: {others}")

    def _clear(self) -> None:
        if self.interactive:
            self.stream.write("\r" + " " * 120 + "\r")


def _safe(probe: Callable[[], Probe]) -> Probe:
    """A probe that raises is simply not done yet (its error is the detail shown on timeout),
    unless it raises DemoError: then waiting longer cannot help."""
    try:
        return probe()
    except DemoError:
        raise
    except Exception as exc:
        return Probe(False, f"{type(exc).__name__}: {exc}")
