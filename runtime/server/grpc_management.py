"""TorchServe's gRPC management service on `grpc_management_port` (TorchServe's 7071).

`org.pytorch.serve.grpc.management.ManagementAPIsService` (TorchServe 0.12's management.proto):
RegisterModel, ScaleWorker, DescribeModel, ListModels, UnregisterModel, SetDefault. Each method
turns its request into the parameters the HTTP management API takes and calls the same
`ManagementApi` call, so validation, limits and messages exist once; the management key is
checked by the data plane's `authorize`, as on the HTTP port. The reply's `msg` is TorchServe's
status text or the JSON document its HTTP API would send.

What TorchServe's gRPC service does differently from its HTTP API, and this one follows
(checked by tests/integration/test_grpc_differential.py): proto3 has no absent numbers, so a 0
means "not given" (ScaleWorker's `min_worker` then defaults to 1, registration's
`initial_workers` to `default_workers_per_model`), registration is asynchronous unless
`synchronous` is set, ListModels' `limit` of 0 lists nothing, and a call refused because
`enable_model_api` is off is PERMISSION_DENIED "Model API disabled". Errors otherwise map by
HTTP status (404 NOT_FOUND, 400 INVALID_ARGUMENT, 409 ALREADY_EXISTS, ...) with the message as
details.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from marfleet.runtime.server.auth import Kind
from marfleet.runtime.server.errors import ApiError
from marfleet.runtime.server.grpc_api import error_code, metadata_headers
from marfleet.runtime.server.management_api import Answer, ManagementApi, ModelApiDisabled
from marfleet.runtime.server.protos import management_pb2 as pb

SERVICE = "org.pytorch.serve.grpc.management.ManagementAPIsService"
MODEL_API_DISABLED = "Model API disabled"

Authorize = Callable[[Kind, str | None], None]


def _given(**values: object) -> dict[str, str]:
    """Proto3 fields as query parameters: empty strings and zeros are "not given"."""
    return {key: str(value) for key, value in values.items() if value not in ("", 0)}


def _required(name: str) -> str:
    if not name:
        raise ApiError(400, "Parameter model_name is required.")
    return name


class Management:
    """ManagementAPIsService on `ManagementApi`."""

    def __init__(self, api: ManagementApi, authorize: Authorize) -> None:
        self._api = api
        self._authorize = authorize

    def handler(self) -> grpc.GenericRpcHandler:
        methods: dict[str, tuple[Callable[[Any], Awaitable[Answer]], Any]] = {
            "DescribeModel": (self.describe, pb.DescribeModelRequest),
            "ListModels": (self.list_models, pb.ListModelsRequest),
            "RegisterModel": (self.register, pb.RegisterModelRequest),
            "ScaleWorker": (self.scale, pb.ScaleWorkerRequest),
            "SetDefault": (self.set_default, pb.SetDefaultRequest),
            "UnregisterModel": (self.unregister, pb.UnregisterModelRequest),
        }
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                name: grpc.unary_unary_rpc_method_handler(
                    self._transport(method),
                    request_deserializer=request.FromString,
                    response_serializer=pb.ManagementResponse.SerializeToString,
                )
                for name, (method, request) in methods.items()
            },
        )

    def _transport(
        self, method: Callable[[Any], Awaitable[Answer]]
    ) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[pb.ManagementResponse]]:
        async def call(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> pb.ManagementResponse:
            try:
                self._authorize("management", metadata_headers(context).get("authorization"))
                answer = await method(request)
            except ModelApiDisabled:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, MODEL_API_DISABLED)
                raise AssertionError("abort returned") from None  # abort always raises
            except ApiError as error:
                await context.abort(error_code(error, torchserve=False), error.message)
                raise AssertionError("abort returned") from None
            return pb.ManagementResponse(msg=answer.text())

        return call

    async def describe(self, request: pb.DescribeModelRequest) -> Answer:
        return await self._api.describe(
            _required(request.model_name), request.model_version or None, request.customized
        )

    async def list_models(self, request: pb.ListModelsRequest) -> Answer:
        return await self._api.list_models(
            {"limit": str(request.limit), "next_page_token": str(request.next_page_token)}
        )

    async def register(self, request: pb.RegisterModelRequest) -> Answer:
        query = _given(
            url=request.url,
            model_name=request.model_name,
            handler=request.handler,
            runtime=request.runtime,
            batch_size=request.batch_size,
            max_batch_delay=request.max_batch_delay,
            initial_workers=request.initial_workers,
            response_timeout=request.response_timeout,
            startup_timeout=request.startup_timeout,
        )
        query["synchronous"] = "true" if request.synchronous else "false"
        return await self._api.register(query)

    async def scale(self, request: pb.ScaleWorkerRequest) -> Answer:
        minimum = request.min_worker or 1
        query = {
            "min_worker": str(minimum),
            "max_worker": str(request.max_worker or minimum),
            "synchronous": "true" if request.synchronous else "false",
        }
        name = _required(request.model_name)
        return await self._api.scale(name, request.model_version or None, query)

    async def set_default(self, request: pb.SetDefaultRequest) -> Answer:
        return await self._api.set_default(_required(request.model_name), request.model_version)

    async def unregister(self, request: pb.UnregisterModelRequest) -> Answer:
        return await self._api.unregister(
            _required(request.model_name), request.model_version or None
        )
