"""The data plane: the one path from any transport (HTTP, gRPC) to a model's workers.

Every inference API of the runtime — TorchServe's `/predictions`, KServe v1 and v2 over HTTP,
TorchServe's gRPC Predictions and the Open Inference Protocol over gRPC — turns its request
into a `Call` and hands it here. What must behave the same on every transport therefore lives
only here: the token check, the model lookup, v2 tensor validation, queueing with its
refusals, the response-size limit, the per-model request metrics, and naming the model
version that answered (`x-marfleet-model-version`, which the router labels its series with).
Transports only decode their wire format into a `Call` and encode what comes back; they never
touch the registry.

    plane = DataPlane(registry, max_response_bytes=..., is_healthy=..., server_version=...,
                      tokens=tokens_or_None)
    plane.authorize("management", authorization_header)   # raises ApiError 400 InvalidKey
    entry = plane.model("mnist", None)                     # default version; ApiError 404
    result = await plane.predict(Call("mnist", None, body, content_type, headers, query, t0))
    result, outputs = await plane.infer_v2(call, kserve_v2.validate(document, binary))

Failures the server decides are raised as `ApiError` (errors.py): an HTTP status, TorchServe's
error type and a message saying what to do. HTTP renders it as TorchServe's JSON error body; gRPC
maps the status to a gRPC code (`grpc_api.status_code`). A handler's own answer — including a
failed one, which already carries TorchServe's error body — comes back as an `ItemResult`, with
its status, untouched. If the caller's coroutine is cancelled (the client went away) while its
job waits, the job's future is cancelled and the batch queue drops it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from marfleet.runtime.server import kserve_v2
from marfleet.runtime.server.auth import Kind, Tokens
from marfleet.runtime.server.errors import ApiError
from marfleet.runtime.server.http import MODEL_VERSION_HEADER
from marfleet.runtime.server.jsondepth import DEFAULT_MAX_DEPTH, TooDeep, check_depth
from marfleet.runtime.server.request_ids import request_id_of
from marfleet.runtime.workers.pool import Job
from marfleet.runtime.workers.process import BatchItem, ItemResult
from marfleet.runtime.workers.registry import (
    ModelNotFound,
    ModelRegistry,
    ModelVersion,
    NoWorkers,
    QueueIsFull,
    VersionNotFound,
)

RETRY_AFTER_SECONDS = "1"
SERVER_NAME = "marfleet"


@dataclass(frozen=True, slots=True)
class Call:
    """One inference request, whatever transport brought it."""

    model: str
    version: str | None  # None: the model's default version
    body: bytes
    content_type: str
    headers: Mapping[str, str]  # names lower-cased (HTTP headers, gRPC metadata)
    parameters: Mapping[str, str]  # the query string, or a gRPC request's `input` map
    received_at: float  # time.perf_counter() when the request had fully arrived
    explain: bool | None = False  # None: the handler sees no `explain` property at all


class DataPlane:
    def __init__(
        self,
        registry: ModelRegistry,
        *,
        max_response_bytes: int,
        is_healthy: Callable[[], bool],
        server_version: str,
        tokens: Tokens | None = None,
        max_json_depth: int = DEFAULT_MAX_DEPTH,
        envelope: str = "",
    ) -> None:
        self._registry = registry
        # TorchServe's service_envelope: the workers wrap and unwrap requests themselves, so a
        # v2 answer is theirs, byte for byte, not one this plane builds
        self.envelope = envelope
        self.max_json_depth = max_json_depth
        self._max_response_bytes = max_response_bytes
        self._is_healthy = is_healthy
        self.server_version = server_version
        self.tokens = tokens

    # who may call

    def authorize(self, kind: Kind, authorization: str | None) -> None:
        """Check `Authorization: Bearer <key>` for an API ("token": the token API's key);
        no-op with token auth disabled. TorchServe's rules are `Tokens.check`'s."""
        if self.tokens is not None:
            self.tokens.check(kind, authorization)

    # health and metadata

    def healthy(self) -> bool:
        return self._is_healthy()

    def model(self, name: str, version: str | None) -> ModelVersion:
        try:
            return self._registry.get(name, version)
        except ModelNotFound as error:
            raise ApiError(404, str(error), type="ModelNotFoundException") from None
        except VersionNotFound as error:
            raise ApiError(404, str(error), type="ModelVersionNotFoundException") from None

    def model_names(self) -> list[str]:
        """The registered models' names, sorted (KServe's model lists)."""
        return self._registry.names()

    def server_metadata(self) -> dict[str, Any]:
        """KServe v2 server metadata."""
        return {
            "name": SERVER_NAME,
            "version": self.server_version,
            "extensions": ["binary_tensor_data"],
        }

    def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        """KServe v2 model metadata; the tensors are those the archive's model-config.yaml
        declares (`kserve_v2.declared_tensors`), else empty lists."""
        entry = self.model(name, version)
        return {
            "name": entry.name,
            "versions": [v.version for v in self._registry.versions(entry.name)],
            "platform": "pytorch",
            "inputs": entry.tensors.get("inputs", []),
            "outputs": entry.tensors.get("outputs", []),
        }

    # inference

    async def predict(self, call: Call) -> ItemResult:
        """Queue `call` for its model's workers and wait for its result. When the handler streams
        (sends intermediate responses), this is the first part, as soon as it is sent, and
        `result.rest` yields the others, the final result last; `rest.close()` stops the work."""
        entry = self.model(call.model, call.version)
        if "json" in call.content_type.lower():
            try:
                check_depth(call.body, self.max_json_depth)
            except TooDeep as error:
                raise ApiError(400, f"Invalid request: {error}") from None
        return await self._run(entry, call)

    async def infer_v2(
        self, call: Call, request: kserve_v2.V2Request
    ) -> tuple[ItemResult, dict[str, Any] | None]:
        """Run a validated v2 request; the v2 response document when the handler answered 200
        (its tensors' data as lists: each transport encodes them), else None and its result."""
        entry = self.model(call.model, call.version)
        result = await self._run(entry, call)
        if result.rest is not None:  # the v2 protocol has one answer: the handler's last
            async for part in result.rest:
                result = part
        if result.status != 200:
            return result, None
        return result, kserve_v2.response_document(request, entry.name, entry.version, result.body)

    async def _run(self, entry: ModelVersion, call: Call) -> ItemResult:
        metrics = entry.metrics
        metrics.request_received()
        status = 499  # the client went away before an answer
        named = {MODEL_VERSION_HEADER: entry.version}
        try:
            request_id = request_id_of(call.headers)  # over HTTP, the one the core chose
            item = BatchItem(
                request_id, call.content_type, call.headers, call.parameters, call.body
            )
            try:
                result = await self._answer(entry, item, call.explain, named)
            except ApiError as error:
                status = error.status
                raise
            status = result.status
            return replace(result, headers={**result.headers, **named})
        finally:
            metrics.request_answered(status, time.perf_counter() - call.received_at)

    async def handler_description(self, entry: ModelVersion) -> dict[str, Any]:
        """What a version's handler says of itself (TorchServe's `?customized=true`): asked
        of one of its workers with a request whose header `describe` is `True`, which
        BaseHandler answers with `describe_handle()`. A JSON object in the answer is the
        description; anything else (None, text, a list) gives `{}`, as in TorchServe."""
        item = BatchItem(request_id_of({}), "application/json", {"describe": "True"}, {}, b"")
        result = await self._answer(entry, item, None, {}, purpose="describe")
        try:
            answer = json.loads(result.body) if result.body else None
        except ValueError:
            answer = None
        if result.status != 200:
            failure = answer if isinstance(answer, dict) else {}
            message = failure.get("message") or "Prediction failed"
            raise ApiError(result.status, str(message), type=failure.get("type"))
        return answer if isinstance(answer, dict) else {}

    async def _answer(
        self,
        entry: ModelVersion,
        item: BatchItem,
        explain: bool | None,
        headers: Mapping[str, str],
        purpose: str = "inference",
    ) -> ItemResult:
        """Queue `item` on the version and wait for its answer (ApiError, with `headers`, when
        it cannot be queued or the answer is over max_response_size)."""
        future: asyncio.Future[ItemResult] = asyncio.get_running_loop().create_future()
        try:
            entry.submit(Job(item, explain, future), purpose)
        except NoWorkers as error:
            raise ApiError(503, str(error), headers=headers) from None
        except QueueIsFull as error:
            retry = {"Retry-After": RETRY_AFTER_SECONDS, **headers}
            raise ApiError(503, str(error), headers=retry) from None
        result = await future
        if len(result.body) > self._max_response_bytes:
            raise ApiError(
                413,
                f"The response is {len(result.body)} bytes, over max_response_size "
                f"({self._max_response_bytes})",
                headers=headers,
            )
        return result
