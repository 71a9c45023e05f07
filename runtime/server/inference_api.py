"""The inference port over HTTP: TorchServe's API, KServe v1 and KServe v2.

Each route decodes its request into a `dataplane.Call` and encodes what the data plane answers;
lookup, validation, queueing, limits and metrics are the data plane's (see `dataplane.py`),
shared with the gRPC services. If the client disconnects while its job waits, the HTTP core
cancels the route's coroutine, and with it the job.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from marfleet.runtime.server import kserve_v2
from marfleet.runtime.server.dataplane import Call, DataPlane
from marfleet.runtime.server.errors import ApiError, json_response
from marfleet.runtime.server.http import Request, Response, StreamedResponse
from marfleet.runtime.server.routing import Router
from marfleet.runtime.workers.parts import Parts
from marfleet.runtime.workers.process import ItemResult


class InferenceApi:
    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane

    def routes(self, router: Router) -> None:
        any_method = ("GET", "POST", "PUT", "DELETE", "HEAD")
        router.add(
            any_method,
            "/ping",
            self.ping,
            "Server health: 200 Healthy, or 500 Unhealthy while a model that should serve has "
            "no ready worker (or, with require_startup_models, a startup model is not serving).",
        )
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
        router.add("GET", "/", self.alive, "Liveness, as KServe's server answers it.")
        router.add("GET", "/v1/models", self.model_names, "KServe v1: the models served.")
        router.add(
            "GET",
            "/v1/models/{model_name}",
            self.model_ready,
            "KServe v1 model readiness: 503 until a worker is ready.",
        )
        router.add("GET", "/v2", self.v2_server, "KServe v2 server metadata.")
        router.add("GET", "/v2/health/live", self.v2_live, "KServe v2 liveness.")
        router.add("GET", "/v2/health/ready", self.v2_ready, "KServe v2 readiness.")
        router.add("GET", "/v2/models", self.model_names, "The models served (KServe's extension).")
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
                self.model_ready,
                "KServe v2 model readiness: 503 until a worker is ready.",
            )
            router.add(
                "POST",
                f"/v2/models/{{model_name}}{suffix}/infer",
                self._v2_route(False),
                "KServe v2 inference with typed tensors.",
            )
            router.add(
                "POST",
                f"/v2/models/{{model_name}}{suffix}/explain",
                self._v2_route(True),
                "An explanation of a KServe v2 request (TorchServe's extension).",
            )

    # TorchServe and KServe v1

    async def ping(self, request: Request) -> Response:
        if self._plane.healthy():
            return json_response({"status": "Healthy"})
        return json_response({"status": "Unhealthy"}, 500)

    def _predict_route(self, explain: bool) -> Callable[[Request], Awaitable[Response]]:
        async def route(request: Request) -> Response:
            content_type = request.headers.get("content-type", "")
            result = await self._plane.predict(_call(request, request.body, content_type, explain))
            return _response(result)

        return route

    async def alive(self, request: Request) -> Response:
        """KServe's SDK asks `GET /` whether a v1 server lives (TorchServe answers 405)."""
        return json_response({"status": "alive"})

    async def model_names(self, request: Request) -> Response:
        return json_response({"models": self._plane.model_names()})

    # KServe v2

    async def v2_server(self, request: Request) -> Response:
        return json_response(self._plane.server_metadata())

    async def v2_live(self, request: Request) -> Response:
        return json_response({"live": True})

    async def v2_ready(self, request: Request) -> Response:
        ready = self._plane.healthy()
        return json_response({"ready": ready}, 200 if ready else 503)

    async def v2_metadata(self, request: Request) -> Response:
        params = request.params
        return json_response(
            self._plane.model_metadata(params["model_name"], params.get("model_version"))
        )

    async def model_ready(self, request: Request) -> Response:
        """KServe v1 and v2 model readiness: 503 while the model has no ready worker, as KServe
        answers both (a readiness probe on either path fails until the model can answer)."""
        entry = self._plane.model(request.params["model_name"], request.params.get("model_version"))
        return json_response(
            {"name": entry.name, "ready": entry.healthy}, 200 if entry.healthy else 503
        )

    def _v2_route(self, explain: bool) -> Callable[[Request], Awaitable[Response]]:
        """A validated v2 request (binary tensors turned into JSON data) for the handler. An
        inference's answer becomes a v2 response here, unless a service_envelope makes one in
        the worker; an explanation, as in TorchServe, is the handler's answer unchanged."""

        async def route(request: Request) -> Response:
            self._plane.model(request.params["model_name"], request.params.get("model_version"))
            try:
                parsed = kserve_v2.parse_request(
                    request.body, request.headers, max_depth=self._plane.max_json_depth
                )
            except kserve_v2.V2Error as error:
                raise ApiError(400, f"Invalid KServe v2 request: {error}") from None
            call = _call(request, json.dumps(parsed.document).encode(), "application/json", explain)
            if explain or self._plane.envelope:
                return _response(await self._plane.predict(call))
            result, document = await self._plane.infer_v2(call, parsed)
            if document is None:
                return _response(result)
            encoded, headers = kserve_v2.encode_json(document, parsed)
            return Response(200, encoded, "application/json", {**result.headers, **headers})

        return route


def _call(request: Request, body: bytes, content_type: str, explain: bool) -> Call:
    params = request.params
    return Call(
        params["model_name"],
        params.get("model_version"),
        body,
        content_type,
        request.headers,
        request.query,
        request.received_at,
        explain,
    )


def _response(result: ItemResult) -> Response:
    if result.rest is None:
        return Response(result.status, result.body, result.content_type or None, result.headers)
    chunks = _Bodies(result.body, result.rest)
    return StreamedResponse(
        result.status, b"", result.content_type or None, result.headers, chunks=chunks
    )


class _Bodies:
    """A streamed answer's bodies, for HTTP chunked transfer: the first part's, then the rest's."""

    def __init__(self, first: bytes, rest: Parts) -> None:
        self._first: bytes | None = first
        self._rest = rest

    def __aiter__(self) -> _Bodies:
        return self

    async def __anext__(self) -> bytes:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return (await self._rest.__anext__()).body

    def close(self) -> None:
        self._rest.close()
