"""The inference port: TorchServe's API, KServe v1 and KServe v2, on one path to the workers.

Every inference route ends in `InferenceApi.infer`: look the model version up, enqueue a job,
await its result. Refusals are immediate (404 unknown model, 503 no worker, 503 + Retry-After
when the queue is full), and if the client disconnects while its job waits, the HTTP core
cancels this coroutine, which cancels the job's future, which makes the batch queue drop it.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable

from marfleet.runtime.server import kserve_v2
from marfleet.runtime.server.errors import ApiError, json_response
from marfleet.runtime.server.http import Request, Response
from marfleet.runtime.server.routing import Router
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


class InferenceApi:
    def __init__(
        self,
        registry: ModelRegistry,
        *,
        max_response_bytes: int,
        is_healthy: Callable[[], bool],
        server_version: str,
    ) -> None:
        self._registry = registry
        self._max_response_bytes = max_response_bytes
        self._is_healthy = is_healthy
        self._server_version = server_version

    def routes(self, router: Router) -> None:
        any_method = ("GET", "POST", "PUT", "DELETE", "HEAD")
        router.add(any_method, "/ping", self.ping, "Server health: 200 Healthy or 500 Unhealthy.")
        for kind, explain in (("predictions", False), ("explanations", True)):
            handler = self._predict_route(explain)
            action = "an explanation" if explain else "a prediction"
            summary = f"Run {action} on a model's default version."
            router.add(("POST", "PUT"), f"/{kind}/{{model_name}}", handler, summary)
            router.add(
                ("POST", "PUT"),
                f"/{kind}/{{model_name}}/{{model_version}}",
                handler,
                summary.replace("default version", "given version"),
            )
        router.add(
            "POST",
            "/v1/models/{model_name}:predict",
            self._predict_route(False),
            "KServe v1 predict.",
        )
        router.add(
            "POST",
            "/v1/models/{model_name}:explain",
            self._predict_route(True),
            "KServe v1 explain.",
        )
        router.add("GET", "/v1/models/{model_name}", self.v1_model, "KServe v1 model readiness.")
        router.add("GET", "/v2", self.v2_server, "KServe v2 server metadata.")
        router.add("GET", "/v2/health/live", self.v2_live, "KServe v2 liveness.")
        router.add("GET", "/v2/health/ready", self.v2_ready, "KServe v2 readiness.")
        for suffix in ("", "/versions/{model_version}"):
            router.add(
                "GET",
                f"/v2/models/{{model_name}}{suffix}",
                self.v2_metadata,
                "KServe v2 model metadata.",
            )
            router.add(
                "GET",
                f"/v2/models/{{model_name}}{suffix}/ready",
                self.v2_model_ready,
                "KServe v2 model readiness.",
            )
            router.add(
                "POST",
                f"/v2/models/{{model_name}}{suffix}/infer",
                self.v2_infer,
                "KServe v2 inference with typed tensors.",
            )

    # TorchServe and KServe v1

    async def ping(self, request: Request) -> Response:
        if self._is_healthy():
            return json_response({"status": "Healthy"})
        return json_response({"status": "Unhealthy"}, 500)

    def _predict_route(self, explain: bool) -> Callable[[Request], Awaitable[Response]]:
        async def route(request: Request) -> Response:
            entry = self._lookup(request)
            result = await self.infer(
                entry, request, request.body, request.headers.get("content-type", ""), explain
            )
            return Response(result.status, result.body, result.content_type or None, result.headers)

        return route

    async def v1_model(self, request: Request) -> Response:
        entry = self._lookup(request)
        return json_response({"name": entry.name, "ready": entry.healthy})

    # KServe v2

    async def v2_server(self, request: Request) -> Response:
        return json_response(
            {
                "name": SERVER_NAME,
                "version": self._server_version,
                "extensions": ["binary_tensor_data"],
            }
        )

    async def v2_live(self, request: Request) -> Response:
        return json_response({"live": True})

    async def v2_ready(self, request: Request) -> Response:
        ready = self._is_healthy()
        return json_response({"ready": ready}, 200 if ready else 503)

    async def v2_metadata(self, request: Request) -> Response:
        entry = self._lookup(request)
        versions = [v.version for v in self._registry.versions(entry.name)]
        return json_response(
            {
                "name": entry.name,
                "versions": versions,
                "platform": "pytorch",
                "inputs": [],
                "outputs": [],
            }
        )

    async def v2_model_ready(self, request: Request) -> Response:
        entry = self._lookup(request)
        return json_response(
            {"name": entry.name, "ready": entry.healthy}, 200 if entry.healthy else 503
        )

    async def v2_infer(self, request: Request) -> Response:
        entry = self._lookup(request)
        try:
            parsed = kserve_v2.parse_request(request.body, request.headers)
        except kserve_v2.V2Error as error:
            raise ApiError(400, f"Invalid KServe v2 request: {error}") from None
        body = json.dumps(parsed.document).encode()
        result = await self.infer(entry, request, body, "application/json", False)
        if result.status != 200:
            return Response(result.status, result.body, result.content_type or None, result.headers)
        encoded, headers = kserve_v2.build_response(parsed, entry.name, entry.version, result.body)
        return Response(200, encoded, "application/json", {**result.headers, **headers})

    # shared

    def _lookup(self, request: Request) -> ModelVersion:
        params = request.params
        try:
            return self._registry.get(params["model_name"], params.get("model_version"))
        except ModelNotFound as error:
            raise ApiError(404, str(error), type="ModelNotFoundException") from None
        except VersionNotFound as error:
            raise ApiError(404, str(error), type="ModelVersionNotFoundException") from None

    async def infer(
        self, entry: ModelVersion, request: Request, body: bytes, content_type: str, explain: bool
    ) -> ItemResult:
        """Queue one request for `entry`'s workers and wait for its result."""
        metrics = entry.metrics
        metrics.request_received()
        status = 499  # the client went away before an answer
        try:
            future: asyncio.Future[ItemResult] = asyncio.get_running_loop().create_future()
            request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
            item = BatchItem(request_id, content_type, request.headers, request.query, body)
            try:
                entry.submit(Job(item, explain, future))
            except NoWorkers as error:
                status = 503
                raise ApiError(503, str(error)) from None
            except QueueIsFull as error:
                status = 503
                raise ApiError(
                    503, str(error), headers={"Retry-After": RETRY_AFTER_SECONDS}
                ) from None
            result = await future
            if len(result.body) > self._max_response_bytes:
                status = 413
                raise ApiError(
                    413,
                    f"The response is {len(result.body)} bytes, over max_response_size "
                    f"({self._max_response_bytes})",
                )
            status = result.status
            return result
        finally:
            metrics.request_answered(status, time.perf_counter() - request.received_at)
