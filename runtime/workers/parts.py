"""The rest of a streamed answer: intermediate responses after the first, then the final one.

When a handler sends intermediate responses, the job's future resolves with the first part
(`ItemResult.rest` set to a `Parts`), so a non-streaming answer costs nothing extra and a
streaming one reaches the client as soon as it starts. The pool `put`s each later part and
`finish`es with the handler's final result; the consumer iterates. `close()` (the client went
away) calls `on_close` once, which tells the worker to stop generating for this request.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from marfleet.runtime.workers.process import ItemResult


class StreamBroken(Exception):
    """The answer ended in an error after parts of it were sent (the final result's status)."""

    def __init__(self, result: ItemResult) -> None:
        super().__init__(f"the streamed answer ended with status {result.status}")
        self.result = result


class Parts:
    def __init__(self, on_close: Callable[[], None]) -> None:
        self._items: deque[ItemResult] = deque()
        self._final: ItemResult | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._on_close: Callable[[], None] | None = on_close
        self._exhausted = False

    # producer side (the pool)

    def put(self, part: ItemResult) -> None:
        if self._final is None:
            self._items.append(part)
            self._wake()

    def finish(self, result: ItemResult) -> None:
        if self._final is None:
            self._final = result
            self._on_close = None  # nothing left to stop
            self._wake()

    @property
    def finished(self) -> bool:
        return self._final is not None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # consumer side (a transport)

    def __aiter__(self) -> Parts:
        return self

    async def __anext__(self) -> ItemResult:
        while not self._items:
            if self._exhausted:
                raise StopAsyncIteration
            final = self._final
            if final is not None:
                self._exhausted = True
                if final.status >= 400:
                    raise StreamBroken(final)
                return final
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._items.popleft()

    def close(self) -> None:
        """The consumer is gone: stop the producer (once)."""
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()
