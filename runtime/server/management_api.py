"""The management API: TorchServe's model calls with their parameters, statuses and bodies.

`ManagementApi` holds the calls, each taking TorchServe's parameters as strings and returning
an `Answer`; the HTTP routes here and TorchServe's gRPC ManagementAPIsService
(`grpc_management.py`) are thin adapters over them, so both transports share every rule.

Register, scale, describe, list (paginated), unregister (draining what was accepted) and
set-default answer exactly as TorchServe 0.12 does — tests/integration/
test_torchserve_differential_api.py compares every call with a running TorchServe — except
that a malformed or negative number is a 400 that names the parameter, where TorchServe
silently ignores it (or, for `min_worker=-1`, fails with a 500 IndexOutOfBoundsException).
Registration and unregistration are refused with 405 unless `enable_model_api=true`,
TorchServe's default.

Scaling sets TorchServe's worker range: `min_worker` (default: the current minimum) workers run,
`max_worker` defaults to the new minimum. A registration without `initial_workers` starts
`default_workers_per_model` workers, none if that is unset (TorchServe's rule for the API;
models loaded at start-up get marfleet's default instead).
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from marfleet.runtime.server.errors import ApiError, json_response
from marfleet.runtime.server.http import Handler, Request, Response
from marfleet.runtime.server.model_source import ModelLoader, Registration
from marfleet.runtime.server.routing import METHOD_NOT_ALLOWED, Router
from marfleet.runtime.workers.pool import WorkerSlot
from marfleet.runtime.workers.registry import (
    DefaultVersionInUse,
    ModelNotFound,
    ModelRegistry,
    ModelVersion,
    VersionNotFound,
)

DEFAULT_PAGE_SIZE = 100
_REGISTER_NUMBERS = (
    "batch_size",
    "max_batch_delay",
    "initial_workers",
    "response_timeout",
    "startup_timeout",
)
RUNTIMES = ("python", "python3")  # TorchServe's RuntimeType values a Python worker serves
PROCESSING = "Processing worker updates..."
_STATES = {"starting": "STARTING", "ready": "READY", "busy": "READY"}
# describe keys TorchServe 0.12 has for features marfleet does not run, with the values
# TorchServe reports when a model does not use them (same order as TorchServe's answer)
_UNUSED_FEATURES_BEFORE_DEVICE = {
    "maxRetryTimeoutInSec": 300,
    "clientTimeoutInMills": 0,
    "parallelType": "",
    "parallelLevel": 0,
}
_UNUSED_FEATURES_AFTER_DEVICE = {
    "continuousBatching": False,
    "useJobTicket": False,
    "useVenv": False,
    "stateful": False,
    "sequenceMaxIdleMSec": 0,
    "sequenceTimeoutMSec": 0,
    "maxNumSequence": 0,
    "maxSequenceJobQueueSize": 0,
}


@dataclass(frozen=True)
class Answer:
    """A management call's outcome, whichever transport asked: the JSON document HTTP sends as
    the body, and for calls that answer TorchServe's status text, that text (gRPC's `msg`)."""

    document: Any
    status: int = 200
    message: str | None = None

    @classmethod
    def status_text(cls, message: str, status: int = 200) -> Answer:
        return cls({"status": message}, status, message)

    def text(self) -> str:
        """What TorchServe's gRPC ManagementResponse carries: the status text, or the document
        as TorchServe pretty-prints it."""
        return self.message if self.message is not None else json.dumps(self.document, indent=2)

    def response(self) -> Response:
        return json_response(self.document, self.status)


class ModelApiDisabled(ApiError):
    """Registering or unregistering while `enable_model_api` is off: TorchServe's 405 over
    HTTP; its gRPC service answers PERMISSION_DENIED instead."""

    def __init__(self) -> None:
        super().__init__(405, METHOD_NOT_ALLOWED)


class ManagementApi:
    """The management calls on TorchServe's parameters (strings, as in its query strings),
    shared by the HTTP routes here and the gRPC service (`grpc_management.py`)."""

    def __init__(
        self,
        registry: ModelRegistry,
        loader: ModelLoader,
        describe_handler: Callable[[ModelVersion], Awaitable[dict[str, Any]]],
        *,
        enable_model_api: bool,
    ) -> None:
        """`describe_handler`: what a version's handler says of itself (the data plane's
        `handler_description`, for `customized=true`)."""
        self._registry = registry
        self._loader = loader
        self._describe_handler = describe_handler
        self._enable_model_api = enable_model_api

    def routes(self, router: Router) -> None:
        def http(call: Callable[[Request], Awaitable[Answer]]) -> Handler:
            async def handle(request: Request) -> Response:
                return (await call(request)).response()

            return handle

        def name(request: Request) -> str:
            return request.params["model_name"]

        def version(request: Request) -> str | None:
            return request.params.get("model_version")

        router.add(
            "GET",
            "/models",
            http(lambda r: self.list_models(r.query)),
            "List registered models (paginated).",
        )
        router.add(
            "POST",
            "/models",
            http(lambda r: self.register(r.query)),
            "Register a model from the store or a URL.",
        )
        for pattern in ("/models/{model_name}", "/models/{model_name}/{model_version}"):
            router.add(
                "GET",
                pattern,
                http(lambda r: self.describe(name(r), version(r), _flag(r.query, "customized"))),
                "Describe a model version (or all).",
            )
            router.add(
                "PUT",
                pattern,
                http(lambda r: self.scale(name(r), version(r), r.query)),
                "Scale a model version's workers.",
            )
            router.add(
                "DELETE",
                pattern,
                http(lambda r: self.unregister(name(r), version(r))),
                "Unregister a model version.",
            )
        router.add(
            "PUT",
            "/models/{model_name}/{model_version}/set-default",
            http(lambda r: self.set_default(name(r), r.params["model_version"])),
            "Make a version the model's default.",
        )

    async def list_models(self, query: Mapping[str, str]) -> Answer:
        limit = _number(query, "limit", DEFAULT_PAGE_SIZE)
        start = max(0, _number(query, "next_page_token", 0))
        if limit < 0 or limit > DEFAULT_PAGE_SIZE:
            limit = DEFAULT_PAGE_SIZE
        names = self._registry.names()
        document: dict[str, Any] = {}
        if start + limit <= len(names):  # TorchServe: a page that reaches the end has a token
            document["nextPageToken"] = str(start + limit)
        page = names[start : start + limit]
        document["models"] = [
            {"modelName": name, "modelUrl": self._registry.get(name).url} for name in page
        ]
        return Answer(document)

    async def register(self, query: Mapping[str, str]) -> Answer:
        self._require_model_api()
        url = query.get("url")
        if not url:
            raise ApiError(400, "Parameter url is required.")
        runtime = query.get("runtime")
        if runtime is not None and runtime not in RUNTIMES:
            raise ApiError(400, f"Invalid RuntimeType value: {runtime}")
        api = {key: str(_number(query, key, 0)) for key in _REGISTER_NUMBERS if query.get(key)}
        if int(api.get("initial_workers", 0)) < 0:
            api["initial_workers"] = "0"  # TorchServe: no workers, use the scale API
        synchronous = query.get("synchronous", "true").lower() != "false"
        registration = Registration(
            url,
            query.get("model_name") or None,
            api,
            synchronous,
            handler=query.get("handler") or None,
        )
        entry, workers = await self._loader.register(registration)
        if workers and not synchronous:
            return Answer.status_text(PROCESSING, 202)
        message = (
            f'Model "{entry.name}" Version: {entry.version} '
            f"registered with {workers} initial workers"
        )
        if workers == 0:
            message += ". Use scale workers API to add workers for the model."
        return Answer.status_text(message)

    async def describe(self, name: str, version: str | None, customized: bool = False) -> Answer:
        """One version (or `all`); `customized` adds what the version's handler says of itself
        (`describe_handle`), as TorchServe does for one version (not for `all`)."""
        if version == "all":
            entries = self._call(lambda: self._registry.versions(name))
            return Answer([self._description(entry) for entry in entries])
        entry = self._entry(name, version)
        description = self._description(entry)
        if customized:
            description["customizedMetadata"] = await self._describe_handler(entry)
        return Answer([description])

    async def scale(self, name: str, version: str | None, query: Mapping[str, str]) -> Answer:
        entry = self._entry(name, version)
        count = _number(query, "min_worker", entry.settings.min_workers)
        maximum = _number(query, "max_worker", count)
        if count < 0:
            raise ApiError(400, f"Parameter min_worker must be 0 or more, got {count}")
        if maximum < count:
            raise ApiError(400, "max_worker cannot be less than min_worker.")
        self._loader.check_workers(count, "min_worker")
        self._loader.check_workers(maximum, "max_worker")
        synchronous = _flag(query, "synchronous")
        errors = await self._registry.scale(entry, count, maximum, wait=synchronous)
        if errors:
            raise ApiError(500, f"Failed to start workers for model {name}: {errors[0]}")
        if not synchronous:
            return Answer.status_text(PROCESSING, 202)
        suffix = f", version: {version}" if version else ""
        return Answer.status_text(f"Workers scaled to {count} for model: {name}{suffix}")

    async def unregister(self, name: str, version: str | None) -> Answer:
        self._require_model_api()
        entry = self._entry(name, version)
        try:
            await self._registry.remove(entry, drain_timeout=entry.settings.response_timeout_s)
        except DefaultVersionInUse as error:
            raise ApiError(403, str(error), type="InvalidModelVersionException") from None
        return Answer.status_text(f'Model "{name}" unregistered')

    async def set_default(self, name: str, version: str) -> Answer:
        self._call(lambda: self._registry.set_default(name, version))
        return Answer.status_text(
            f'Default version successfully updated for model "{name}" to "{version}"'
        )

    # helpers

    def _require_model_api(self) -> None:
        if not self._enable_model_api:
            raise ModelApiDisabled()

    def _entry(self, name: str, version: str | None) -> ModelVersion:
        return self._call(lambda: self._registry.get(name, version))

    @staticmethod
    def _call(action: Any) -> Any:
        try:
            return action()
        except ModelNotFound as error:
            raise ApiError(404, str(error), type="ModelNotFoundException") from None
        except VersionNotFound as error:
            raise ApiError(404, str(error), type="ModelVersionNotFoundException") from None

    def _description(self, entry: ModelVersion) -> dict[str, Any]:
        settings = entry.settings
        return {
            "modelName": entry.name,
            "modelVersion": entry.version,
            "modelUrl": entry.url,
            "runtime": "python",
            "minWorkers": settings.min_workers,
            "maxWorkers": settings.max_workers,
            "batchSize": settings.batch_size,
            "maxBatchDelay": settings.max_batch_delay_ms,
            "responseTimeout": settings.response_timeout_s,
            "startupTimeout": settings.startup_timeout_s,
            **_UNUSED_FEATURES_BEFORE_DEVICE,
            "deviceType": "gpu" if entry.devices else "cpu",
            **_UNUSED_FEATURES_AFTER_DEVICE,
            # TorchServe keeps this per model name: a version registered later under the name
            # of a start-up model reports true as well
            "loadedAtStartup": any(
                version.loaded_at_startup for version in self._registry.versions(entry.name)
            ),
            "workers": [_worker(slot) for slot in entry.pool.slots if slot.state is not None],
            "jobQueueStatus": {
                "remainingCapacity": entry.queue.remaining_capacity,
                "pendingRequests": len(entry.queue),
            },
        }


def _worker(slot: WorkerSlot) -> dict[str, Any]:
    process = slot.process
    started = datetime.fromtimestamp(process.started_at if process else 0, UTC)
    return {
        "id": slot.worker_id,
        "startTime": started.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "status": _STATES.get(slot.state or "", "UNLOADING"),
        "memoryUsage": _resident_bytes(process.pid if process else None),
        "pid": process.pid if process and process.pid else -1,
        "gpu": slot.gpu_id is not None,
        "gpuUsage": "N/A" if slot.gpu_id is None else f"gpuId::{slot.gpu_id}",
    }


def _resident_bytes(pid: int | None) -> int:
    if pid is None:
        return 0
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _flag(query: Mapping[str, str], key: str) -> bool:
    """A boolean parameter read as TorchServe reads one: `true` in any case, else false."""
    return query.get(key, "false").lower() == "true"


def _number(query: Mapping[str, str], key: str, default: int) -> int:
    value = query.get(key)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ApiError(400, f"Parameter {key} must be a whole number, got {value!r}") from None
