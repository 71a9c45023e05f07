"""Registered models: name -> versions (one default), each with its queue, workers and metrics.

This is where a request meets a model version: `submit` enqueues a job or refuses it at once
(no worker, queue full), so the HTTP layer only translates outcomes into status codes.
Unregistering first hides the version (new requests get 404), then drains what was already
accepted, then stops its workers — nothing accepted is dropped.

Registration is atomic: a version counts as serving (for `/ping`) only once its initial workers
loaded; if they cannot load, or the registering client goes away first, or the version is
unregistered while loading, it is removed again with its workers (a worker still loading is
killed at once) and its unpacked files, so it can be registered again.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from marfleet.runtime.batching import BatchQueue, QueueFull
from marfleet.runtime.config import ModelSettings
from marfleet.runtime.metrics import ModelMetrics, RuntimeMetrics
from marfleet.runtime.workers.placement import RoundRobin
from marfleet.runtime.workers.pool import BatchPolicy, Job, WorkerPool, error_result, job_is_live
from marfleet.runtime.workers.process import WorkerSpec

log = logging.getLogger("marfleet.registry")

_DRAIN_POLL_S = 0.02


class ModelNotFound(LookupError):
    pass


class VersionNotFound(LookupError):
    pass


class AlreadyRegistered(Exception):
    pass


class DefaultVersionInUse(Exception):
    pass


class NoWorkers(Exception):
    pass


class QueueIsFull(Exception):
    pass


@dataclass(frozen=True)
class WorkerEnvironment:
    """What every worker process gets, whatever the model."""

    threads: int
    env: Mapping[str, str]
    stop_grace_s: float
    envelope: str = ""  # TorchServe's service_envelope, for every model (envelopes.py)


@dataclass(eq=False)
class ModelVersion:
    name: str
    version: str
    url: str
    model_dir: Path
    manifest: dict[str, object]
    settings: ModelSettings
    devices: list[int]
    queue: BatchQueue[Job]
    pool: WorkerPool
    metrics: ModelMetrics
    loaded_at_startup: bool
    cleanup_dir: Path | None = None
    # the v2 metadata tensors its model-config.yaml declares: {"inputs": [...], "outputs": [...]}
    tensors: Mapping[str, list[dict[str, Any]]] = field(default_factory=dict)
    serving: bool = False  # its initial workers loaded; until then /ping ignores it
    removed: bool = False
    registered_at: float = field(default_factory=time.time)
    unfinished: int = 0  # accepted jobs without a result yet (queued, batching or running)

    def submit(self, job: Job, purpose: str = "inference") -> None:
        """Queue `job`; `purpose` names the request in TorchServe's no-worker message."""
        if self.pool.target == 0:
            raise NoWorkers(
                f'Model "{self.name}" has no worker to serve {purpose} request. '
                "Please use scale workers API to add workers."
            )
        try:
            self.queue.put(job)
            self.unfinished += 1
            deadline = asyncio.get_running_loop().call_later(
                self.settings.response_timeout_s, self._expire, job
            )
            job.future.add_done_callback(lambda _: self._finished(deadline))
        except QueueFull:
            self.metrics.rejections.inc()
            raise QueueIsFull(
                f'Model "{self.name}" version {self.version} has {self.queue.capacity} requests '
                "queued (job_queue_size); retry later or add workers"
            ) from None

    def _finished(self, deadline: asyncio.TimerHandle) -> None:
        self.unfinished -= 1
        deadline.cancel()

    def _expire(self, job: Job) -> None:
        """A job still queued after responseTimeout gets 503; a running one has its own timer."""
        if job.future.done() or job.started:
            return
        job.future.set_result(
            replace(
                error_result(
                    503,
                    f'Model "{self.name}" version {self.version}: the request waited '
                    f"{self.settings.response_timeout_s} s (responseTimeout) without a free "
                    "worker; retry later or add workers",
                ),
                headers={"Retry-After": "1"},
            )
        )

    @property
    def healthy(self) -> bool:
        """It can answer: a worker is ready, or it is meant to have none. A version short of
        some of its workers (a scale-up still loading, one of several restarting) serves on
        the rest, so `/ping` keeps the pod in rotation; with none ready it cannot answer."""
        return self.pool.healthy > 0 or self.settings.min_workers == 0


class ModelRegistry:
    def __init__(
        self, *, metrics: RuntimeMetrics, workers: WorkerEnvironment, round_robin: RoundRobin
    ) -> None:
        self._metrics = metrics
        self._workers = workers
        self._round_robin = round_robin
        self._worker_ids: Iterator[int] = itertools.count(9000)
        self._models: dict[str, dict[str, ModelVersion]] = {}
        self._defaults: dict[str, str] = {}
        self._settling: set[asyncio.Future[list[str]]] = set()  # background registrations

    # lookups

    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str) -> list[ModelVersion]:
        versions = self._models.get(name)
        if not versions:
            raise ModelNotFound(f"Model not found: {name}")
        return list(versions.values())

    def get(self, name: str, version: str | None = None) -> ModelVersion:
        versions = self._models.get(name)
        if not versions:
            raise ModelNotFound(f"Model not found: {name}")
        wanted = version or self._defaults[name]
        entry = versions.get(wanted)
        if entry is None:
            raise VersionNotFound(f"Model version: {wanted} does not exist for model: {name}")
        return entry

    def default_version(self, name: str) -> str:
        self.get(name)
        return self._defaults[name]

    def all(self) -> list[ModelVersion]:
        return [entry for versions in self._models.values() for entry in versions.values()]

    def healthy(self) -> bool:
        """Every version that should be serving can answer (loading ones do not count)."""
        return all(entry.healthy for entry in self.all() if entry.serving)

    # changes

    async def add(
        self,
        *,
        name: str,
        version: str,
        url: str,
        model_dir: Path,
        manifest: dict[str, object],
        settings: ModelSettings,
        devices: list[int],
        loaded_at_startup: bool,
        cleanup_dir: Path | None,
        wait: bool,
        handler: str | None = None,
        tensors: Mapping[str, list[dict[str, Any]]] | None = None,
    ) -> list[str]:
        """Register and start `settings.min_workers` workers; returns load errors if `wait`.

        A version whose initial workers cannot load is removed again (with `wait` before this
        returns, else in the background), so a broken model never stays registered; if the
        caller is cancelled while waiting, the version is removed before the cancellation
        propagates.
        """
        if version in self._models.get(name, {}):
            raise AlreadyRegistered(
                f"Model version {version} is already registered for model {name}"
            )
        queue: BatchQueue[Job] = BatchQueue(settings.job_queue_size, is_live=job_is_live)
        metrics = self._metrics.for_model(name, version, lambda: len(queue))
        policy = BatchPolicy(
            settings.batch_size, settings.max_batch_delay_ms / 1000, settings.response_timeout_s
        )

        def spec_for(gpu_id: int | None) -> WorkerSpec:
            return WorkerSpec(
                model_dir=model_dir,
                model_name=name,
                batch_size=settings.batch_size,
                gpu_id=gpu_id,
                threads=self._workers.threads,
                load_timeout=float(settings.startup_timeout_s),
                env=self._workers.env,
                handler=handler,
                envelope=self._workers.envelope,
            )

        pool = WorkerPool(
            queue=queue,
            policy=policy,
            spec_for=spec_for,
            next_device=lambda: self._round_robin.next(devices),
            worker_ids=self._worker_ids,
            observer=metrics,
            stop_grace_s=self._workers.stop_grace_s,
        )
        entry = ModelVersion(
            name,
            version,
            url,
            model_dir,
            manifest,
            settings,
            devices,
            queue,
            pool,
            metrics,
            loaded_at_startup,
            cleanup_dir,
            tensors or {},
        )
        self._models.setdefault(name, {})[version] = entry
        self._defaults.setdefault(name, version)
        settled = asyncio.ensure_future(self._settle(entry))
        if not wait:
            self._settling.add(settled)
            settled.add_done_callback(self._settling.discard)
            return []
        try:
            return await asyncio.shield(settled)
        except asyncio.CancelledError:
            # the client went away: take the version out again, and finish doing so
            await asyncio.shield(self._discard(entry, kill_after=0.0, load_failed=False))
            raise

    async def _settle(self, entry: ModelVersion) -> list[str]:
        """Wait for the initial workers; serving if they loaded, removed if not."""
        errors = await entry.pool.scale(entry.settings.min_workers, wait=True)
        if entry.removed:
            return errors or [
                f'model "{entry.name}" version {entry.version} was unregistered while loading'
            ]
        if errors:
            await self._discard(entry, kill_after=self._workers.stop_grace_s, load_failed=True)
        else:
            entry.serving = True
        return errors

    async def scale(
        self, entry: ModelVersion, minimum: int, maximum: int, *, wait: bool
    ) -> list[str]:
        """Set the version's worker range (TorchServe's min/max) and run `minimum` workers."""
        entry.settings = replace(entry.settings, min_workers=minimum, max_workers=maximum)
        return await entry.pool.scale(minimum, wait=wait)

    def set_default(self, name: str, version: str) -> None:
        versions = self._models.get(name)
        if not versions:
            raise ModelNotFound(f"Model not found: {name}")
        if version not in versions:
            raise VersionNotFound(f"Model version {version} does not exist for model {name}")
        self._defaults[name] = version

    async def remove(self, entry: ModelVersion, *, drain_timeout: float) -> None:
        """Hide `entry`, finish what it accepted (up to `drain_timeout`), stop its workers.

        As in TorchServe, the default version goes last: set another default first.
        """
        versions = self._models.get(entry.name, {})
        if self._defaults.get(entry.name) == entry.version and len(versions) > 1:
            raise DefaultVersionInUse(f"Cannot remove default version for model {entry.name}")
        self._hide(entry)
        await self._drain(entry, drain_timeout)

    async def _drain(self, entry: ModelVersion, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while entry.unfinished and time.monotonic() < deadline:
            await asyncio.sleep(_DRAIN_POLL_S)
        await self._discard(entry, kill_after=max(1.0, deadline - time.monotonic()))

    async def shutdown(self, *, drain_timeout: float) -> None:
        """Drain and stop every model version (server shutdown)."""
        entries = self.all()
        for entry in entries:
            self._hide(entry)
        await asyncio.gather(*(self._drain(entry, drain_timeout) for entry in entries))

    def _hide(self, entry: ModelVersion) -> None:
        versions = self._models.get(entry.name, {})
        if versions.get(entry.version) is not entry:
            return
        del versions[entry.version]
        if not versions:
            del self._models[entry.name]
            del self._defaults[entry.name]
        elif self._defaults[entry.name] == entry.version:
            self._defaults[entry.name] = next(iter(versions))

    async def _discard(
        self, entry: ModelVersion, *, kill_after: float, load_failed: bool = False
    ) -> None:
        """Stop the workers (killing any still busy after `kill_after` s), answer the rest."""
        if entry.removed:
            return
        entry.removed = True
        self._hide(entry)
        await entry.pool.shutdown(kill_after)
        gone = error_result(
            503,
            f'Model "{entry.name}" version {entry.version} was unregistered before this '
            "request ran; retry against the model's current version",
        )
        for job in entry.queue.take_all():
            if not job.future.done():
                job.future.set_result(gone)
        self._metrics.forget_model(entry.name, entry.version, keep_load_failures=load_failed)
        if entry.cleanup_dir is not None:
            shutil.rmtree(entry.cleanup_dir, ignore_errors=True)
