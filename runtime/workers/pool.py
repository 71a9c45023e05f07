"""The workers of one model version: how many, where, and the loop each one runs.

Every worker slot is one asyncio task that owns at most one live process at a time:

    start process (wait for "ready") -> take a batch from the queue -> run it -> deliver -> ...

and, when the process crashes or overruns the response timeout, fails only the batch it held
(500 "Worker died."), waits a Fibonacci backoff (0, 1, 1, 2, 3, 5 ... s, TorchServe's schedule,
reset after a successful batch) and starts a new process on the same device. Scaling down marks
slots as retiring: an idle slot stops at once, a busy one after its batch, so no accepted
request is dropped. The pool reports what happens through `PoolObserver` (metrics live
elsewhere) and never touches HTTP.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Protocol

from marfleet.runtime.batching import BatchQueue
from marfleet.runtime.workers.parts import Parts
from marfleet.runtime.workers.process import (
    BatchItem,
    ItemResult,
    MetricRecord,
    WorkerDied,
    WorkerLoadError,
    WorkerProcess,
    WorkerSpec,
)

log = logging.getLogger("marfleet.workers")

BACKOFF_SECONDS = (0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55)
_ERROR_TYPES = {500: "InternalServerException", 503: "ServiceUnavailableException"}


def error_result(status: int, message: str) -> ItemResult:
    """A job's answer in TorchServe's error shape, for failures outside the handler."""
    body = {"code": status, "type": _ERROR_TYPES[status], "message": message}
    text = json.dumps(body, indent=2) + "\n"  # as TorchServe ends the errors it writes
    return ItemResult(status, text.encode(), "application/json", {})


WORKER_DIED = error_result(500, "Worker died.")


@dataclass(slots=True, eq=False)
class Job:
    """One request waiting for (or being run by) a worker."""

    item: BatchItem
    explain: bool | None
    future: asyncio.Future[ItemResult]
    enqueued_at: float = field(default_factory=time.perf_counter)
    stream: Parts | None = None  # once the handler sent an intermediate response (parts.py)
    started: bool = False  # a worker took it: from now on the batch's timeout bounds it


def job_is_live(job: Job) -> bool:
    return not job.future.done()


@dataclass(frozen=True)
class BatchPolicy:
    batch_size: int
    max_batch_delay_s: float
    response_timeout_s: float


class PoolObserver(Protocol):
    def worker_state(self, device: str, before: str | None, after: str | None) -> None: ...
    def worker_restarted(self, reason: str) -> None: ...
    def model_loaded(self, seconds: float, worker_id: str) -> None: ...
    def model_load_failed(self) -> None: ...
    def batch_started(self, jobs: Sequence[Job], now: float) -> None: ...
    def batch_finished(self, seconds: float) -> None: ...
    def handler_failed(self, code: int) -> None: ...
    def handler_metrics(self, records: list[MetricRecord]) -> None: ...


class WorkerSlot:
    """One worker position: its id, device, state and the task that keeps a process in it."""

    def __init__(self, worker_id: str, gpu_id: int | None) -> None:
        self.worker_id = worker_id
        self.gpu_id = gpu_id
        self.device = "cpu" if gpu_id is None else f"cuda:{gpu_id}"
        self.state: str | None = None  # starting, ready, busy; None once stopped
        self.process: WorkerProcess | None = None
        self.retiring = False
        self.task: asyncio.Task[None] | None = None
        self.first_start: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self.waiting = False  # awaiting work or a backoff, so interrupt() may cancel the task
        self.interrupted = False

    def interrupt(self) -> None:
        """Wake the slot if it is waiting for work (its process died, or it should retire)."""
        if self.waiting and self.task is not None and not self.interrupted:
            self.interrupted = True
            self.task.cancel()


class WorkerPool:
    def __init__(
        self,
        *,
        queue: BatchQueue[Job],
        policy: BatchPolicy,
        spec_for: Callable[[int | None], WorkerSpec],
        next_device: Callable[[], int | None],
        worker_ids: Iterator[int],
        observer: PoolObserver,
        stop_grace_s: float = 10.0,
    ) -> None:
        self._queue = queue
        self.policy = policy
        self._spec_for = spec_for
        self._next_device = next_device
        self._worker_ids = worker_ids
        self._observer = observer
        self._stop_grace_s = stop_grace_s
        self.slots: list[WorkerSlot] = []

    @property
    def target(self) -> int:
        return sum(1 for slot in self.slots if not slot.retiring)

    @property
    def healthy(self) -> int:
        return sum(1 for s in self.slots if not s.retiring and s.state in ("ready", "busy"))

    async def scale(self, count: int, *, wait: bool) -> list[str]:
        """Grow or shrink to `count` workers; with `wait`, return the load errors of new ones."""
        active = [slot for slot in self.slots if not slot.retiring]
        added = [self._add_slot() for _ in range(count - len(active))]
        # retire workers still starting first, then idle ones, busy ones last; newest first
        # within each (as TorchServe, which keeps its ready workers when scaling down)
        keep_order = {"ready": 1, "busy": 2}
        retiring = sorted(reversed(active), key=lambda s: keep_order.get(s.state or "", 0))
        for slot in retiring[: max(0, len(active) - count)]:
            slot.retiring = True
            slot.interrupt()
            if slot.state == "starting" and slot.process is not None:
                slot.process.kill()  # a load holds no accepted work: stop it now, not later
        if not wait:
            return []
        outcomes = await asyncio.gather(*(slot.first_start for slot in added))
        await self._wait_retired()
        return [outcome for outcome in outcomes if outcome is not None]

    async def shutdown(self, grace: float) -> None:
        """Retire every worker; kill those still busy or loading after `grace` seconds."""
        await self.scale(0, wait=False)
        tasks = [slot.task for slot in self.slots if slot.task is not None]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        if pending:
            for slot in self.slots:
                if slot.process is not None:
                    slot.process.kill()
            await asyncio.gather(*pending, return_exceptions=True)

    def _add_slot(self) -> WorkerSlot:
        slot = WorkerSlot(str(next(self._worker_ids)), self._next_device())
        self.slots.append(slot)
        slot.task = asyncio.get_running_loop().create_task(self._run(slot))
        return slot

    async def _wait_retired(self) -> None:
        tasks = [s.task for s in self.slots if s.retiring and s.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    def _set_state(self, slot: WorkerSlot, state: str | None) -> None:
        self._observer.worker_state(slot.device, slot.state, state)
        slot.state = state

    async def _run(self, slot: WorkerSlot) -> None:
        failures = 0
        try:
            while not slot.retiring:
                reason = await self._one_process(slot)
                if reason == "retired":
                    break
                if reason == "served":
                    failures = 0
                failures += 1
                delay = BACKOFF_SECONDS[min(failures - 1, len(BACKOFF_SECONDS) - 1)]
                if delay:
                    await self._sleep_unless_retired(slot, delay)
        finally:
            self._set_state(slot, None)
            if slot.process is not None:
                await slot.process.stop(self._stop_grace_s)
            if not slot.first_start.done():
                slot.first_start.set_result("the worker was stopped before it loaded the model")
            self.slots.remove(slot)

    async def _sleep_unless_retired(self, slot: WorkerSlot, delay: float) -> None:
        slot.waiting = True
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            if not self._consume_interrupt(slot):
                raise
        finally:
            slot.waiting = False

    async def _one_process(self, slot: WorkerSlot) -> str:
        """Run one process in the slot until it dies or retires; returns why it ended."""
        self._set_state(slot, "starting")
        process = WorkerProcess(
            slot.worker_id, self._spec_for(slot.gpu_id), lambda _: slot.interrupt()
        )
        slot.process = process
        try:
            load_seconds = await process.start()
        except WorkerLoadError as error:
            log.error(
                "worker failed to load the model",
                extra={"worker": slot.worker_id, "reason": str(error)},
            )
            self._observer.model_load_failed()
            if not slot.first_start.done():
                slot.first_start.set_result(str(error))
            slot.process = None
            return "load_failed"
        self._observer.model_loaded(load_seconds, slot.worker_id)
        if not slot.first_start.done():
            slot.first_start.set_result(None)
        self._set_state(slot, "ready")
        served = False
        while not slot.retiring:
            if not process.alive:
                break
            jobs = await self._next_batch(slot)
            if jobs is None:
                continue
            if process.exited():
                self._queue.requeue(jobs)  # they wait for the restarted worker
                break
            self._set_state(slot, "busy")
            try:
                await self._run_batch(process, jobs)
                served = True
            except WorkerDied as death:
                if death.reason == "unread":  # it never saw the batch: the next worker runs it
                    unseen = [job for job in jobs if job.stream is None]
                    for job in unseen:
                        job.started = False
                    self._queue.requeue(unseen)
                    self._fail([job for job in jobs if job.stream is not None])
                else:
                    self._fail(jobs)
                self._observer.worker_restarted(
                    "crash" if death.reason == "unread" else death.reason
                )
                log.error(
                    "worker died; restarting it",
                    extra={"worker": slot.worker_id, "reason": death.reason, "pid": process.pid},
                )
                slot.process = None
                return "served" if served else "died"
            self._set_state(slot, "ready")
        if slot.retiring:
            return "retired"
        self._observer.worker_restarted("crash")
        log.error("worker exited while idle; restarting it", extra={"worker": slot.worker_id})
        slot.process = None
        return "served" if served else "died"

    async def _next_batch(self, slot: WorkerSlot) -> list[Job] | None:
        slot.waiting = True
        try:
            policy = self.policy
            return await self._queue.take(policy.batch_size, policy.max_batch_delay_s)
        except asyncio.CancelledError:
            if not self._consume_interrupt(slot):
                raise
            return None
        finally:
            slot.waiting = False

    @staticmethod
    def _consume_interrupt(slot: WorkerSlot) -> bool:
        if not slot.interrupted:
            return False
        slot.interrupted = False
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        return True

    async def _run_batch(self, process: WorkerProcess, jobs: list[Job]) -> None:
        started = time.perf_counter()
        self._observer.batch_started(jobs, started)
        for job in jobs:
            job.started = True
        for explain, group in itertools.groupby(jobs, key=lambda job: job.explain):
            batch = list(group)
            for index, job in enumerate(batch):
                job.future.add_done_callback(partial(_cancel_if_abandoned, process, index))
            results, metrics = await process.run(
                [job.item for job in batch],
                explain=explain,
                timeout=self.policy.response_timeout_s,
                on_partial=partial(_deliver_part, process, batch),
            )
            if metrics:
                self._observer.handler_metrics(metrics)
            failed = {r.status for r in results if r.status >= 500}
            for code in failed:
                self._observer.handler_failed(code)
            for job, result in zip(batch, results, strict=False):
                _deliver(job, result)
        self._observer.batch_finished(time.perf_counter() - started)

    @staticmethod
    def _fail(jobs: Sequence[Job]) -> None:
        for job in jobs:
            _deliver(job, WORKER_DIED)


def _deliver(job: Job, result: ItemResult) -> None:
    """The final result: the end of a stream, or the whole answer."""
    if job.stream is not None:
        job.stream.finish(result)
    elif not job.future.done():
        job.future.set_result(result)


def _deliver_part(process: WorkerProcess, batch: list[Job], index: int, part: ItemResult) -> None:
    """An intermediate response: the first resolves the job's future, the rest follow it."""
    job = batch[index]
    if job.stream is not None:
        job.stream.put(part)
    elif not job.future.done():
        job.stream = Parts(on_close=partial(process.cancel, index))
        job.future.set_result(replace(part, rest=job.stream))


def _cancel_if_abandoned(
    process: WorkerProcess, index: int, future: asyncio.Future[ItemResult]
) -> None:
    if future.cancelled():
        process.cancel(index)
