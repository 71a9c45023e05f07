"""What one fetch may cost: bytes, wall time, time without progress, and whether to stop.

A `Budget` is made once per fetch and passed to every source, so all attempts, redirects and
files of a prefix draw on the same allowance: a download that keeps failing and retrying
still ends at the deadline, and a folder of many objects is capped as a whole.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


class FetchError(RuntimeError):
    """The model could not be fetched; the message says why and what to check."""


class Retryable(Exception):
    """A failure worth another attempt (connection lost, 5xx, a body cut short)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class Budget:
    max_bytes: int
    deadline_seconds: float
    cancelled: Callable[[], bool]
    started: float = 0.0
    used_bytes: int = 0

    def __post_init__(self) -> None:
        self.started = time.monotonic()

    def remaining(self) -> float:
        return self.deadline_seconds - (time.monotonic() - self.started)

    def check_time(self) -> None:
        """Raise FetchError once the fetch was cancelled or its deadline passed."""
        if self.cancelled():
            raise FetchError("the fetch was cancelled")
        if self.remaining() <= 0:
            raise FetchError(
                f"the fetch did not finish within its deadline of {self.deadline_seconds:g}s; "
                "check the store's speed or raise --deadline"
            )

    def expect(self, size: int | None, what: str) -> None:
        """Refuse at once what announces itself as bigger than the cap."""
        if size is not None and self.used_bytes + size > self.max_bytes:
            raise FetchError(
                f"{what} is {size} bytes, over the size cap of {self.max_bytes} bytes (--max-bytes)"
            )

    def add(self, count: int, what: str) -> None:
        """Count bytes received; raise FetchError past the cap or the deadline."""
        self.used_bytes += count
        if self.used_bytes > self.max_bytes:
            raise FetchError(
                f"{what} passed the size cap of {self.max_bytes} bytes (--max-bytes); "
                "nothing was placed"
            )
        self.check_time()
