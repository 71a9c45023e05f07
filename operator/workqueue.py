"""A work queue of InferenceService keys, shaped like client-go's.

A key waits in the queue at most once however many events name it; a key is never handed to
two workers at once (an event for a key being worked on makes it come back once the work is
done); failures come back after an exponential delay that resets on success.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(self, base_delay: float = 0.5, max_delay: float = 60.0) -> None:
        self._queue: asyncio.Queue[K] = asyncio.Queue()
        self._waiting: set[K] = set()
        self._active: set[K] = set()
        self._again: set[K] = set()
        self._failures: dict[K, int] = {}
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self.base_delay = base_delay
        self.max_delay = max_delay

    def add(self, key: K) -> None:
        if key in self._waiting:
            return
        if key in self._active:
            self._again.add(key)
            return
        self._waiting.add(key)
        self._queue.put_nowait(key)

    def depth(self) -> int:
        """Keys waiting for a worker (not counting those being worked on)."""
        return len(self._waiting)

    async def get(self) -> K:
        key = await self._queue.get()
        self._waiting.discard(key)
        self._active.add(key)
        return key

    def done(self, key: K) -> None:
        self._active.discard(key)
        if key in self._again:
            self._again.discard(key)
            self.add(key)

    def succeeded(self, key: K) -> None:
        self._failures.pop(key, None)

    def retry_later(self, key: K) -> float:
        """Count a failure and schedule the key again; return the delay chosen."""
        failures = self._failures[key] = self._failures.get(key, 0) + 1
        delay = min(self.base_delay * 2 ** (failures - 1), self.max_delay)
        self.add_after(key, delay)
        return delay

    def add_after(self, key: K, delay: float) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._timers[key] = asyncio.get_running_loop().call_later(delay, self._fire, key)

    def shutdown(self) -> None:
        """Cancel every pending retry."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)
