"""The frontend's handle on one worker process: spawn, wait until loaded, run batches, kill.

A worker is `python -m marfleet.runtime.workers.worker_main` with one end of a socket pair; the
frontend talks to it through asyncio streams, so waiting on a worker never blocks the event
loop. One task per worker reads its frames; when the stream ends (the process crashed, was
killed, or exited) the batch in flight fails with `WorkerDied` and `on_exit` tells the pool. A
batch that outlives its response timeout gets the process killed (SIGKILL: a handler stuck in
native code ignores anything gentler), and its batch fails with reason "timeout".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pickle
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from marfleet.runtime.workers.parts import Parts
from marfleet.runtime.workers.protocol import CANCEL, LENGTH, Header, frame

WORKER_MODULE = "marfleet.runtime.workers.worker_main"
_STREAM_LIMIT = 1 << 20


@dataclass(frozen=True)
class WorkerSpec:
    model_dir: Path
    model_name: str
    batch_size: int
    gpu_id: int | None
    threads: int
    load_timeout: float
    env: Mapping[str, str]
    handler: str | None = None  # the registration API's `handler`, instead of the manifest's
    envelope: str = ""  # TorchServe's service_envelope (handlers/envelopes.py); "": none


@dataclass(frozen=True, slots=True)
class BatchItem:
    request_id: str
    content_type: str
    headers: Mapping[str, str]
    parameters: Mapping[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class ItemResult:
    status: int
    body: bytes
    content_type: str
    headers: Mapping[str, str]
    rest: Parts | None = None  # a streamed answer: this is its first part, `rest` the others


PartCallback = Callable[[int, ItemResult], None]  # (index in the batch, intermediate response)


MetricRecord = tuple[object, ...]  # (name, value, unit, dimensions, kind) from the handler


class WorkerLoadError(Exception):
    """The worker could not load the model; the message is the worker's reason."""


class WorkerDied(Exception):
    """The worker exited or was killed while a batch was in flight."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"worker {reason}")
        self.reason = reason  # "crash", "timeout", or "unread": it died before reading the batch


class WorkerProcess:
    def __init__(
        self, worker_id: str, spec: WorkerSpec, on_exit: Callable[[WorkerProcess], None]
    ) -> None:
        self.worker_id = worker_id
        self.spec = spec
        self.pid: int | None = None
        self.started_at = time.time()
        self._on_exit = on_exit
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: asyncio.Future[tuple[list[ItemResult], list[MetricRecord]]] | None = None
        self._batch_ids = 0
        self._control: socket.socket | None = None
        self._on_partial: PartCallback | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timeout = 0.0
        self._load_seconds = 0.0
        self._exit_reason = "crash"
        self._killed = False
        self.alive = False

    async def start(self) -> float:
        """Spawn the process and wait until it loaded the model; returns the load time."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._control, control_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._control.setblocking(False)
        spec = self.spec
        argument = {
            "fd": child.fileno(),
            "control_fd": control_child.fileno(),
            "model_dir": str(spec.model_dir),
            "model_name": spec.model_name,
            "gpu_id": spec.gpu_id,
            "batch_size": spec.batch_size,
            "handler": spec.handler,
            "envelope": spec.envelope,
            "threads": spec.threads,
        }
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                WORKER_MODULE,
                json.dumps(argument),
                pass_fds=(child.fileno(), control_child.fileno()),
                env={**os.environ, **spec.env},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=sys.stderr.fileno(),  # handler prints join the logs, not the access log
            )
        finally:
            child.close()
            control_child.close()
        self.pid = self._process.pid
        if self._killed:  # stopped while it was being spawned
            self._process.kill()
        self._reader, self._writer = await asyncio.open_unix_connection(
            sock=parent, limit=_STREAM_LIMIT
        )
        try:
            await self._wait_ready(spec.load_timeout)
        except BaseException:
            self._writer.close()
            self._control.close()
            raise
        self.alive = True
        self._reader_task = asyncio.get_running_loop().create_task(self._read_loop())
        return self._load_seconds

    async def _wait_ready(self, load_timeout: float) -> None:
        assert self._process is not None
        try:
            header = await asyncio.wait_for(self._read_header(), load_timeout)
        except TimeoutError:
            self.kill()
            raise WorkerLoadError(
                f"the worker did not load the model within {load_timeout:.0f} s "
                "(raise startupTimeout in model-config.yaml if loading is slow)"
            ) from None
        except (asyncio.IncompleteReadError, ConnectionError):
            await self._process.wait()
            raise WorkerLoadError(
                f"the worker process {_how_it_ended(self._process.returncode)} while loading "
                "(see its output above)"
            ) from None
        if header[0] != "ready":
            await self._process.wait()
            raise WorkerLoadError(str(header[1]))
        self._load_seconds = float(str(header[2]))

    async def run(
        self,
        items: Sequence[BatchItem],
        *,
        explain: bool | None,
        timeout: float,
        on_partial: PartCallback | None = None,
    ) -> tuple[list[ItemResult], list[MetricRecord]]:
        """Send one batch and wait for its results; raises WorkerDied. Intermediate responses
        go to `on_partial` as they come, and each restarts the response timeout (a handler
        that streams is making progress)."""
        if not self.alive or self._writer is None:
            raise WorkerDied("crash")
        loop = asyncio.get_running_loop()
        self._batch_ids += 1
        batch_id = self._batch_ids
        pending = self._pending = loop.create_future()
        header = (
            "batch",
            batch_id,
            explain,
            [
                (i.request_id, i.content_type, dict(i.headers), dict(i.parameters), len(i.body))
                for i in items
            ],
        )
        self._writer.writelines(frame(header, [item.body for item in items]))
        self._on_partial = on_partial
        self._timeout = timeout
        self._timer = loop.call_later(timeout, self._time_out)
        try:
            return await pending
        finally:
            self._timer.cancel()
            self._pending = None
            self._on_partial = None

    def cancel(self, index: int) -> None:
        """Tell the worker the client of item `index` of the batch in flight went away."""
        if self._control is None or self._pending is None:
            return
        # A worker that is gone or a full control buffer: the answer is dropped anyway.
        with contextlib.suppress(OSError):
            self._control.send(CANCEL.pack(self._batch_ids, index))

    def exited(self) -> bool:
        """Whether the worker is gone, checked now: its reader task may not have run yet.

        The control socket carries nothing from the worker, so a peek that finds its end
        closed means the process exited. The pool asks before it sends a batch, so a request
        arriving just after an idle worker died waits for the restarted one instead of
        failing with "Worker died.".
        """
        if not self.alive or self._control is None:
            return True
        try:
            return self._control.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def kill(self) -> None:
        self._killed = True  # also when it is still being spawned: start() kills it then
        if self._process is not None and self._process.returncode is None:
            self._process.kill()

    async def stop(self, grace: float) -> None:
        """Ask the worker to exit after its current batch; kill it after `grace` seconds."""
        if self._process is None:
            return
        if self.alive and self._writer is not None:
            self._exit_reason = "stopped"
            self._writer.writelines(frame(("stop",)))
        try:
            await asyncio.wait_for(self._process.wait(), grace)
        except TimeoutError:
            self.kill()
            await self._process.wait()
        if self._reader_task is not None:
            await asyncio.gather(self._reader_task, return_exceptions=True)

    async def _partial(self, header: Header) -> None:
        assert self._reader is not None
        _, batch_id, summaries = header
        for index, status, ctype, hdrs, length in summaries:  # type: ignore[attr-defined]
            body = await self._reader.readexactly(length) if length else b""
            if batch_id != self._batch_ids or self._on_partial is None:
                continue
            if self._timer is not None:
                self._timer.cancel()
                self._timer = asyncio.get_running_loop().call_later(self._timeout, self._time_out)
            self._on_partial(index, ItemResult(status, body, ctype, hdrs))

    def _time_out(self) -> None:
        self._exit_reason = "timeout"
        self.kill()

    async def _read_header(self) -> Header:
        assert self._reader is not None
        prefix = await self._reader.readexactly(LENGTH.size)
        header: Header = pickle.loads(await self._reader.readexactly(LENGTH.unpack(prefix)[0]))
        return header

    async def _read_loop(self) -> None:
        reader = self._reader
        assert reader is not None
        try:
            while True:
                header = await self._read_header()
                if header[0] == "partial":
                    await self._partial(header)
                    continue
                if header[0] != "results":
                    continue
                _, _, summaries, metrics = header
                results = [
                    ItemResult(
                        status, await reader.readexactly(length) if length else b"", ctype, hdrs
                    )
                    for status, ctype, hdrs, length in summaries  # type: ignore[attr-defined]
                ]
                if self._pending is not None and not self._pending.done():
                    self._pending.set_result((results, list(metrics)))  # type: ignore[call-overload]
        except (ConnectionResetError, BrokenPipeError):
            # Linux resets a Unix socket that is closed with unread data: the worker died
            # before it read the batch in flight, so that batch can go to another worker.
            if self._exit_reason == "crash":
                self._exit_reason = "unread"
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.alive = False
            if self._writer is not None:
                self._writer.close()
            if self._control is not None:
                self._control.close()
            if self._pending is not None and not self._pending.done():
                self._pending.set_exception(WorkerDied(self._exit_reason))
            if self._process is not None:
                await self._process.wait()
            self._on_exit(self)


def _how_it_ended(returncode: int | None) -> str:
    """'exited with code 3' or 'was killed by SIGSEGV'."""
    if returncode is not None and returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"
