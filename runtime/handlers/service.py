"""ModelService: one model loaded in one worker process, and the batch contract around it.

This is the whole interface between the worker processes and the handler layer (neither side
imports the HTTP layer). `ModelService.load` reads the manifest and model-config.yaml, makes
`import ts` work, finds the handler by TorchServe's rules and initialises it;
`ModelService.handle` turns a batch of `InferenceRequest`s into handler rows, calls the
handler, and turns what comes back into one `InferenceResult` per request. `handle` never
raises: a failed batch answers every request with TorchServe's status and message:

    handler result not a list                  503  Invalid model predict output
    wrong number of results                    503  number of batch response mismatched
    a result that cannot be serialised         503  Unsupported model output data type.
    PredictionException(message, code)         code message
    MemoryError, CUDA errors (out of memory)   507  Out of resources
    any other exception                        500  Prediction failed

(TorchServe 0.12 answers 503 to that last case; the worker contract fixes 500, so that a crash
is told apart from the contract violations above.)

Metrics the handler records through `context.metrics` (and `PredictionTime`, as TorchServe
adds) go to `metrics_sink` after load and after every batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from marfleet.runtime import ts_compat
from marfleet.runtime.archive.errors import ArchiveError
from marfleet.runtime.archive.manifest import Manifest, read_manifest
from marfleet.runtime.archive.model_config import read_model_config
from marfleet.runtime.handlers.codec import (
    encode_output,
    error_body,
    handler_row,
    request_properties,
)
from marfleet.runtime.handlers.context import Context, RequestProcessor
from marfleet.runtime.handlers.envelopes import wrap
from marfleet.runtime.handlers.errors import ModelLoadError, PredictionException, RequestCancelled
from marfleet.runtime.handlers.loader import EntryPoint, enter_model_dir, load_entry_point
from marfleet.runtime.handlers.messages import InferenceRequest, InferenceResult
from marfleet.runtime.handlers.metrics import HandlerMetric, HandlerMetrics
from marfleet.runtime.handlers.streaming import PartSink

__all__ = [
    "HandlerMetric",
    "InferenceRequest",
    "InferenceResult",
    "ModelLoadError",
    "ModelService",
]

logger = logging.getLogger(__name__)

SERVER_NAME = "marfleet"
PREDICTION_METRIC = "PredictionTime"
DEFAULT_LIMIT_MAX_IMAGE_PIXELS = 933120000
INVALID_OUTPUT = (503, "Invalid model predict output")
COUNT_MISMATCH = (503, "number of batch response mismatched")
UNSERIALISABLE = (503, "Unsupported model output data type.")
OUT_OF_RESOURCES = (507, "Out of resources")
PREDICTION_FAILED = (500, "Prediction failed")
CANCELLED = (499, "Every client of the batch closed its request")

MetricsSink = Callable[[list[HandlerMetric]], None]


def server_version() -> str:
    try:
        return version("marfleet")
    except PackageNotFoundError:
        return "0+unknown"


def is_out_of_memory(error: BaseException) -> bool:
    """TorchServe's test: MemoryError, or any exception mentioning CUDA (OOM, CUBLAS init, ...)."""
    return isinstance(error, MemoryError) or "CUDA" in str(error)


def prediction_exception(error: BaseException) -> tuple[int, str] | None:
    """(code, message) of a PredictionException, marfleet's or the installed TorchServe's."""
    if isinstance(error, PredictionException):
        return error.error_code, error.message
    code, message = getattr(error, "error_code", None), getattr(error, "message", None)
    is_named_so = type(error).__name__ == "PredictionException"
    if is_named_so and isinstance(code, int) and isinstance(message, str):
        return code, message
    return None


def failure_status(error: Exception) -> tuple[int, str]:
    """The status and message that answer a batch whose handler raised `error`."""
    declared = prediction_exception(error)
    if declared is not None:
        return declared
    return OUT_OF_RESOURCES if is_out_of_memory(error) else PREDICTION_FAILED


class ModelService:
    """One model loaded in one worker process (a handler instance + its Context)."""

    def __init__(
        self,
        *,
        manifest: Manifest,
        context: Context,
        entry_point: EntryPoint,
        metrics: HandlerMetrics,
        metrics_sink: MetricsSink | None,
    ) -> None:
        self.model_name = context.model_name
        self.model_version = manifest.model_version
        self.manifest: dict[str, Any] = manifest.raw
        self.context = context
        self._entry_point = entry_point
        self._metrics = metrics
        self._metrics_sink = metrics_sink

    @classmethod
    def load(
        cls,
        model_dir: Path,
        *,
        model_name: str | None = None,
        gpu_id: int | None,
        batch_size: int,
        limit_max_image_pixels: int = DEFAULT_LIMIT_MAX_IMAGE_PIXELS,
        metrics_sink: MetricsSink | None = None,
        handler: str | None = None,
        envelope: str = "",
    ) -> ModelService:
        """Load the model unpacked in `model_dir` with its manifest's handler (or `handler`, as
        TorchServe's registration parameter), inside TorchServe's `envelope` if one is named
        (envelopes.py); ModelLoadError says why it cannot."""
        model_dir = model_dir.resolve()
        try:
            manifest = read_manifest(model_dir, default_name=model_dir.name)
        except ArchiveError as error:
            raise ModelLoadError(str(error)) from error
        name = model_name or manifest.model_name
        metrics = HandlerMetrics(name)
        context = Context(
            name,
            str(model_dir),
            manifest.raw,
            batch_size,
            gpu_id,
            server_version(),
            limit_max_image_pixels,
            metrics,
            _model_config(model_dir, manifest),
            server_name=SERVER_NAME,
        )
        ts_compat.install()
        enter_model_dir(model_dir)
        try:
            entry_point = load_entry_point(handler or manifest.handler)
            entry_point.initialize(context)
            entry_point = replace(entry_point, handle=wrap(envelope, entry_point.handle))
        except ModelLoadError:
            raise
        except Exception as error:
            cause = "out of memory" if is_out_of_memory(error) else f"{type(error).__name__}"
            raise ModelLoadError(
                f"model {name!r}: handler {manifest.handler!r} failed to load ({cause}): {error}"
            ) from error
        service = cls(
            manifest=manifest,
            context=context,
            entry_point=entry_point,
            metrics=metrics,
            metrics_sink=metrics_sink,
        )
        logger.info(
            "model loaded",
            extra={
                "model": name,
                "version": manifest.model_version,
                "handler": entry_point.description,
            },
        )
        service._flush_metrics()
        return service

    def handle(
        self,
        batch: Sequence[InferenceRequest],
        *,
        explain: bool | None = False,
        part_sink: PartSink | None = None,
    ) -> list[InferenceResult]:
        """Run one batch through the handler; one result per request, in order. Never raises.
        Parts the handler sends before returning (streaming.py) go to `part_sink`."""
        if not batch:
            return []
        self.context.part_sink = part_sink
        try:
            return self._handle(batch, explain)
        except Exception as error:  # the promise is "never raises": a bug here fails the batch
            self._log_failure(PREDICTION_FAILED[0], "batch failed outside the handler", error)
            return _failed(len(batch), *PREDICTION_FAILED)
        finally:
            self.context.part_sink = None
            self._flush_metrics()

    def _handle(
        self, batch: Sequence[InferenceRequest], explain: bool | None
    ) -> list[InferenceResult]:
        rows = [handler_row(request) for request in batch]
        request_ids = {index: request.request_id for index, request in enumerate(batch)}
        processors = [
            RequestProcessor(request_properties(request, explain=explain)) for request in batch
        ]
        self.context.request_ids = request_ids
        self.context.request_processor = processors
        self._metrics.set_request_ids(request_ids)
        start = time.perf_counter()
        try:
            outputs = self._entry_point.handle(rows, self.context)
        except RequestCancelled:
            logger.info("batch abandoned by its clients", extra={"model": self.model_name})
            return _failed(len(batch), *CANCELLED)
        except Exception as error:
            status, message = failure_status(error)
            self._log_failure(status, "handler failed", error)
            return _failed(len(batch), status, message)
        if not isinstance(outputs, list):
            self._log_failure(INVALID_OUTPUT[0], "handler returned a non-list", None)
            return _failed(len(batch), *INVALID_OUTPUT)
        if len(outputs) != len(batch):
            self._log_failure(COUNT_MISMATCH[0], "handler returned a wrong number of results", None)
            return _failed(len(batch), *COUNT_MISMATCH)
        elapsed_ms = round((time.perf_counter() - start) * 1000, 2)
        self._metrics.add_time(PREDICTION_METRIC, elapsed_ms)
        try:
            bodies = [encode_output(output) for output in outputs]
        except (TypeError, ValueError) as error:
            self._log_failure(UNSERIALISABLE[0], "handler result is not serialisable", error)
            return _failed(len(batch), *UNSERIALISABLE)
        return [
            _result(processor, body) for processor, body in zip(processors, bodies, strict=True)
        ]

    def _log_failure(self, status: int, event: str, error: BaseException | None) -> None:
        logger.warning(
            event,
            exc_info=error is not None and prediction_exception(error) is None,
            extra={"model": self.model_name, "version": self.model_version, "status": status},
        )

    def _flush_metrics(self) -> None:
        records = self._metrics.drain()
        if records and self._metrics_sink is not None:
            self._metrics_sink(records)


def _model_config(model_dir: Path, manifest: Manifest) -> dict[str, Any]:
    if not manifest.config_file:
        return {}
    try:
        return read_model_config(model_dir, manifest.config_file)
    except ArchiveError as error:
        raise ModelLoadError(str(error)) from None


def _failed(count: int, status: int, message: str) -> list[InferenceResult]:
    body = error_body(status, message)
    return [InferenceResult(status, body, "application/json", {}) for _ in range(count)]


def _result(processor: RequestProcessor, body: bytes) -> InferenceResult:
    headers = dict(processor.get_response_headers())
    content_type = ""
    for name in list(headers):
        if name.lower() == "content-type":
            content_type = headers.pop(name)
    return InferenceResult(processor.get_response_status_code(), body, content_type, headers)
