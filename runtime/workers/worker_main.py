"""The worker process: load one model with ModelService, then answer batches until told to stop.

Started by `process.WorkerProcess` as `python -m marfleet.runtime.workers.worker_main SPEC`
(SPEC is JSON) with one end of a Unix socket pair inherited as `SPEC["fd"]`. It is
single-threaded and blocking on purpose: one batch at a time, exactly like a TorchServe worker.
It exits when the frontend says stop or the socket closes (the frontend is gone), so a killed
server never leaves workers behind. SIGINT is ignored: the frontend owns the shutdown.

It exits without the interpreter's finalization (`os._exit` once its output is flushed): with
torch loaded that takes a second or more, and a handler's non-daemon thread makes it wait
forever, while unregistering a model or scaling down waits for the exit. A TorchServe worker is
killed outright at that point, so a handler cannot count on atexit hooks there either. A second
socket (SPEC["control_fd"]) carries only cancellations, which a streaming handler's
`send_intermediate_predict_response` checks between parts (see protocol.py).
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import logging
import os
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import BinaryIO, NoReturn, cast

from marfleet.runtime.handlers.errors import RequestCancelled
from marfleet.runtime.handlers.messages import InferenceResult
from marfleet.runtime.workers.forms import parse_form
from marfleet.runtime.workers.logs import configure_logging
from marfleet.runtime.workers.protocol import (
    read_cancellations,
    read_exact,
    read_header,
    send_frame,
)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    faulthandler.enable()  # a crash in native code (SIGSEGV, SIGABRT) names the Python frames
    configure_logging()
    spec = json.loads(argv[0])
    sock = socket.socket(fileno=int(spec["fd"]))
    control = socket.socket(fileno=int(spec["control_fd"]))
    control.setblocking(False)
    import torch

    torch.set_num_threads(int(spec["threads"]))
    from marfleet.runtime.handlers.service import (
        HandlerMetric,
        InferenceRequest,
        ModelLoadError,
        ModelService,
    )

    metrics: list[tuple[object, ...]] = []

    def sink(batch: list[HandlerMetric]) -> None:
        metrics.extend((m.name, m.value, m.unit, dict(m.dimensions), m.kind) for m in batch)

    started = time.perf_counter()
    try:
        service = ModelService.load(
            Path(spec["model_dir"]),
            model_name=spec["model_name"],
            gpu_id=spec["gpu_id"],
            batch_size=int(spec["batch_size"]),
            handler=spec.get("handler"),
            envelope=spec.get("envelope", ""),
            metrics_sink=sink,
        )
    except ModelLoadError as error:
        send_frame(sock, ("load_failed", str(error)))
        return 1
    except Exception as error:  # a handler's own import or initialize failure
        detail = "".join(traceback.format_exception_only(type(error), error)).strip()
        send_frame(sock, ("load_failed", f"loading the model raised {detail}"))
        return 1
    send_frame(sock, ("ready", os.getpid(), time.perf_counter() - started))
    stream = cast(BinaryIO, sock.makefile("rb", buffering=256 * 1024))
    while True:
        header = read_header(stream)
        if header is None or header[0] == "stop":
            return 0
        _, batch_id, explain, items = header
        requests = []
        for request_id, content_type, headers, parameters, length in items:  # type: ignore[attr-defined]
            body = read_exact(stream, length)
            form = parse_form(content_type, body)
            requests.append(
                InferenceRequest(request_id, body, content_type, headers, parameters, form)
            )
        send_part = _PartSender(sock, control, batch_id, len(requests))
        results = service.handle(
            requests, explain=None if explain is None else bool(explain), part_sink=send_part
        )
        summaries = [(r.status, r.content_type, r.headers, len(r.body)) for r in results]
        send_frame(sock, ("results", batch_id, summaries, metrics[:]), [r.body for r in results])
        metrics.clear()


class _PartSender:
    """The part sink of one batch: sends a streaming handler's parts, unless their client left."""

    def __init__(self, sock: socket.socket, control: socket.socket, batch_id: object, size: int):
        self._sock = sock
        self._control = control
        self._batch_id = batch_id
        self._size = size
        self._cancelled = read_cancellations(control, batch_id)  # also drops stale records

    def __call__(self, index: int, part: InferenceResult) -> None:
        self._cancelled |= read_cancellations(self._control, self._batch_id)
        if len(self._cancelled) >= self._size:
            raise RequestCancelled()
        if index not in self._cancelled:
            summary = [(index, part.status, part.content_type, part.headers, len(part.body))]
            send_frame(self._sock, ("partial", self._batch_id, summary), [part.body])


def _exit_now(code: int) -> NoReturn:
    """Flush what was logged or printed, then end the process without finalizing Python."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit_now(main(sys.argv[1:]))
