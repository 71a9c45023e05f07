"""A bounded FIFO from which several consumers take batches, TorchServe style.

A free worker takes the first waiting request, then keeps taking until it has `max_size`
requests or `max_delay` has passed since it got the first one — the same policy as
TorchServe's `batchSize` / `maxBatchDelay`. The queue knows nothing about HTTP or processes:
items are opaque, and `is_live` tells it which ones are still wanted (a request whose client
hung up is dropped here, before it costs any inference). `put` never blocks and never grows
the queue past its capacity: overload becomes `QueueFull`, which the server turns into 503.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class QueueFull(Exception):
    """The queue holds `capacity` items already; the caller should refuse the request."""


class BatchQueue(Generic[T]):
    def __init__(
        self,
        capacity: int,
        *,
        is_live: Callable[[T], bool],
        on_drop: Callable[[T], None] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"queue capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._items: deque[T] = deque()
        self._waiters: deque[asyncio.Future[bool]] = deque()
        self._is_live = is_live
        self._on_drop = on_drop

    def __len__(self) -> int:
        return len(self._items)

    @property
    def remaining_capacity(self) -> int:
        return self.capacity - len(self._items)

    def put(self, item: T) -> None:
        if len(self._items) >= self.capacity:
            self._drop_dead()  # clients that left (or timed out) must not hold places
        if len(self._items) >= self.capacity:
            raise QueueFull(f"queue is full ({self.capacity} waiting)")
        self._items.append(item)
        self._wake_one()

    def requeue(self, items: list[T]) -> None:
        """Put items taken by a consumer that cannot run them back at the head, in order."""
        self._items.extendleft(reversed(items))
        for _ in items:
            self._wake_one()

    def take_all(self) -> list[T]:
        """Remove and return everything queued (for shutdown and unregistration)."""
        items = list(self._items)
        self._items.clear()
        return items

    async def take(self, max_size: int, max_delay: float) -> list[T]:
        """Wait for one live item, then gather up to `max_size` within `max_delay` seconds."""
        batch: list[T] = []
        while not batch:
            self._pop_into(batch, max_size)
            if not batch:
                await self._wait(None)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_delay
        try:
            while len(batch) < max_size:
                self._pop_into(batch, max_size)
                remaining = deadline - loop.time()
                if len(batch) >= max_size or remaining <= 0 or not await self._wait(remaining):
                    break
        except asyncio.CancelledError:
            self.requeue(batch)  # a consumer that stops while filling gives its items back
            raise
        return batch

    def _drop_dead(self) -> None:
        live = deque(item for item in self._items if self._is_live(item))
        if self._on_drop is not None:
            for item in self._items:
                if not self._is_live(item):
                    self._on_drop(item)
        self._items = live

    def _pop_into(self, batch: list[T], max_size: int) -> None:
        while self._items and len(batch) < max_size:
            item = self._items.popleft()
            if self._is_live(item):
                batch.append(item)
            elif self._on_drop is not None:
                self._on_drop(item)

    async def _wait(self, timeout: float | None) -> bool:
        """Wait until an item is put (True) or `timeout` passes (False)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(waiter)
        timer = None
        if timeout is not None:
            timer = loop.call_later(timeout, _resolve, waiter, False)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self._wake_one()  # the item meant for this consumer goes to another one
            raise
        finally:
            if timer is not None:
                timer.cancel()
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)
                return


def _resolve(waiter: asyncio.Future[bool], value: bool) -> None:
    if not waiter.done():
        waiter.set_result(value)
