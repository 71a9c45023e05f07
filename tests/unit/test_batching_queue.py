"""BatchQueue: TorchServe's batchSize/maxBatchDelay policy, bounded capacity, dropped items."""

from __future__ import annotations

import asyncio

import pytest
from marfleet.runtime.batching import BatchQueue, QueueFull


def live_queue(capacity: int = 10) -> BatchQueue[int]:
    return BatchQueue(capacity, is_live=lambda item: item >= 0)


def test_take_returns_a_full_batch_at_once() -> None:
    async def scenario() -> list[int]:
        queue = live_queue()
        for item in range(6):
            queue.put(item)
        return await queue.take(4, max_delay=60)

    assert asyncio.run(scenario()) == [0, 1, 2, 3]


def test_a_partial_batch_is_sent_when_the_delay_passes() -> None:
    async def scenario() -> list[int]:
        queue = live_queue()
        queue.put(7)
        return await queue.take(4, max_delay=0.01)

    assert asyncio.run(scenario()) == [7]


def test_items_arriving_during_the_delay_join_the_batch() -> None:
    async def scenario() -> list[int]:
        queue = live_queue()
        queue.put(1)
        loop = asyncio.get_running_loop()
        loop.call_soon(queue.put, 2)
        loop.call_soon(queue.put, 3)
        return await queue.take(3, max_delay=60)

    assert asyncio.run(scenario()) == [1, 2, 3]


def test_take_waits_for_the_first_item() -> None:
    async def scenario() -> list[int]:
        queue = live_queue()
        asyncio.get_running_loop().call_later(0.01, queue.put, 5)
        return await queue.take(2, max_delay=0)

    assert asyncio.run(scenario()) == [5]


def test_capacity_is_enforced() -> None:
    queue = live_queue(capacity=2)
    queue.put(1)
    queue.put(2)
    assert queue.remaining_capacity == 0
    with pytest.raises(QueueFull):
        queue.put(3)
    assert len(queue) == 2


def test_dead_items_are_dropped_and_reported() -> None:
    dropped: list[int] = []

    async def scenario() -> list[int]:
        queue: BatchQueue[int] = BatchQueue(10, is_live=lambda i: i >= 0, on_drop=dropped.append)
        for item in (-1, 4, -2, 5):
            queue.put(item)
        return await queue.take(4, max_delay=0)

    assert asyncio.run(scenario()) == [4, 5]
    assert dropped == [-1, -2]


def test_a_consumer_cancelled_while_filling_gives_its_items_back() -> None:
    async def scenario() -> tuple[list[int], list[int]]:
        queue = live_queue()
        queue.put(1)
        queue.put(2)
        filling = asyncio.ensure_future(queue.take(8, max_delay=60))
        await asyncio.sleep(0)
        filling.cancel()
        with pytest.raises(asyncio.CancelledError):
            await filling
        queue.put(3)
        return await queue.take(8, max_delay=0), queue.take_all()

    batch, rest = asyncio.run(scenario())
    assert batch == [1, 2, 3]
    assert rest == []


def test_two_consumers_share_the_work() -> None:
    async def scenario() -> list[list[int]]:
        queue = live_queue()
        first = asyncio.ensure_future(queue.take(2, max_delay=0))
        second = asyncio.ensure_future(queue.take(2, max_delay=0))
        await asyncio.sleep(0)
        for item in range(4):
            queue.put(item)
        return list(await asyncio.gather(first, second))

    batches = asyncio.run(scenario())
    assert sorted(item for batch in batches for item in batch) == [0, 1, 2, 3]
    assert all(batch for batch in batches)


def test_requeue_puts_items_back_in_order_at_the_head() -> None:
    queue = live_queue()
    queue.put(9)
    queue.requeue([1, 2])
    assert queue.take_all() == [1, 2, 9]


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        live_queue(capacity=0)
