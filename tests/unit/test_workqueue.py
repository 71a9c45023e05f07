"""The work queue without a cluster: deduplication, one worker per key, backoff."""

from __future__ import annotations

import asyncio

from marfleet.operator.workqueue import WorkQueue


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_a_key_waits_once_however_many_times_it_is_added() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue()
        for key in ("a", "b", "a", "a", "c", "b"):
            queue.add(key)
        assert queue.depth() == 3
        assert [await queue.get() for _ in range(3)] == ["a", "b", "c"]
        assert queue.depth() == 0

    run(scenario())


def test_keys_come_out_in_the_order_they_were_first_added() -> None:
    async def scenario() -> None:
        queue: WorkQueue[int] = WorkQueue()
        for key in (5, 3, 9, 3, 5, 1):
            queue.add(key)
        got = [await queue.get() for _ in range(4)]
        assert got == [5, 3, 9, 1]

    run(scenario())


def test_a_key_being_worked_on_is_not_handed_out_again_until_done() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue()
        queue.add("a")
        assert await queue.get() == "a"
        queue.add("a")  # an event arrives while "a" is being reconciled
        queue.add("a")
        queue.add("b")
        assert await queue.get() == "b", "a second worker must not get 'a' meanwhile"
        assert queue.depth() == 0
        queue.done("a")
        assert queue.depth() == 1, "the events during the work bring 'a' back once"
        assert await queue.get() == "a"
        queue.done("a")
        queue.done("b")
        assert queue.depth() == 0

    run(scenario())


def test_done_without_new_events_does_not_requeue() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue()
        queue.add("a")
        await queue.get()
        queue.done("a")
        assert queue.depth() == 0

    run(scenario())


def test_failures_back_off_exponentially_up_to_a_cap_and_reset_on_success() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue(base_delay=0.5, max_delay=4.0)
        delays = []
        for _ in range(6):
            delays.append(queue.retry_later("a"))
        assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
        queue.succeeded("a")
        assert queue.retry_later("a") == 0.5
        assert queue.retry_later("b") == 0.5, "each key has its own count"
        queue.shutdown()

    run(scenario())


def test_a_retried_key_comes_back_after_its_delay() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue(base_delay=0.01)
        queue.add("a")
        await queue.get()
        queue.retry_later("a")
        queue.done("a")
        assert queue.depth() == 0, "not at once"
        assert await asyncio.wait_for(queue.get(), 5) == "a"

    run(scenario())


def test_a_later_retry_replaces_the_earlier_timer() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue()
        queue.add_after("a", 0.01)
        queue.add_after("a", 60)
        await asyncio.sleep(0.05)
        assert queue.depth() == 0, "the first timer was cancelled"
        queue.shutdown()

    run(scenario())


def test_an_event_does_not_skip_the_backoff_of_a_failing_key_but_is_not_lost() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue(base_delay=0.01)
        queue.add("a")
        await queue.get()
        queue.retry_later("a")
        queue.done("a")
        queue.add("a")  # a new event: worked on at once, the key is not waiting twice
        assert queue.depth() == 1
        assert await queue.get() == "a"
        queue.done("a")
        # the timer still fires and brings the key back once
        assert await asyncio.wait_for(queue.get(), 5) == "a"

    run(scenario())
