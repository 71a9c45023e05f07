"""The gRPC inference port: TorchServe's inference service and the Open Inference Protocol.

Two services share `grpc_inference_port` (TorchServe's 7070), both thin transports over the
data plane (`dataplane.py`), which owns tokens, lookup, validation, queueing and metrics:

- `org.pytorch.serve.grpc.inference.InferenceAPIsService` (TorchServe 0.12's inference.proto):
  Ping, Predictions, StreamPredictions (one message per intermediate response, then the final
  one) and StreamPredictions2 (bidirectional: each request's answers, tagged with its
  sequence_id). A request's `input` map reaches the handler as the row TorchServe makes of it:
  one key per entry, bytes (sent to the worker as a multipart form, which it already parses).
- the Open Inference Protocol (KServe v2, `open_inference_grpc.proto`), served under both
  `org.pytorch.serve.grpc.openinference.GRPCInferenceService` (TorchServe's name) and
  `inference.GRPCInferenceService` (KServe's and tritonclient's): the messages are the same on
  the wire, so one implementation answers both names. Tensors given as `raw_input_contents`
  are answered in `raw_output_contents`, typed contents with typed contents.

Errors are the data plane's `ApiError`s, mapped by `error_code` to gRPC codes (400
INVALID_ARGUMENT, 404 NOT_FOUND, 503 UNAVAILABLE, ...; on TorchServe's service the codes
TorchServe 0.12 answers), with the message as details. Metadata
keys are the headers (`authorization: Bearer <key>` included). Generated message classes live
in `protos/` (`make protos` regenerates them from the .proto files there).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf import empty_pb2
from google.rpc import status_pb2
from marfleet.runtime.server import kserve_v2
from marfleet.runtime.server.dataplane import Call, DataPlane
from marfleet.runtime.server.errors import ApiError
from marfleet.runtime.server.grpc_codes import status_code
from marfleet.runtime.server.protos import inference_pb2 as ts
from marfleet.runtime.server.protos import open_inference_grpc_pb2 as oip
from marfleet.runtime.workers.parts import StreamBroken
from marfleet.runtime.workers.process import ItemResult

TS_INFERENCE = "org.pytorch.serve.grpc.inference.InferenceAPIsService"
OIP_SERVICES = (
    "org.pytorch.serve.grpc.openinference.GRPCInferenceService",
    "inference.GRPCInferenceService",
)
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_FORM_BOUNDARY = "marfleet-grpc-input"

Request = TypeVar("Request")
Reply = TypeVar("Reply")


def metadata_headers(context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, str]:
    """Invocation metadata as lower-cased headers (binary `-bin` entries left out)."""
    return {
        key.lower(): value
        for key, value in (context.invocation_metadata() or ())
        if isinstance(value, str)
    }


def error_code(error: ApiError, *, torchserve: bool) -> grpc.StatusCode:
    """The gRPC code for a refused call. A bad or missing token is PERMISSION_DENIED on every
    service, and on TorchServe's own service an unknown model is INTERNAL: what TorchServe 0.12
    answers (checked by tests/integration/test_grpc_differential.py)."""
    if error.type == "InvalidKeyException":
        return grpc.StatusCode.PERMISSION_DENIED
    if torchserve and error.status == 404:
        return grpc.StatusCode.INTERNAL
    return status_code(error.status)


async def _abort(context: grpc.aio.ServicerContext[Any, Any], status: int, message: str) -> None:
    await context.abort(status_code(status), message)


def _error_message(result: ItemResult) -> str:
    """A handler's failed answer as gRPC details: its `message`, else its body."""
    try:
        document = json.loads(result.body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return result.body.decode("utf-8", "replace")
    if isinstance(document, dict) and isinstance(document.get("message"), str):
        return document["message"]
    return result.body.decode("utf-8", "replace")


def _api_errors(
    method: Callable[[Request, grpc.aio.ServicerContext[Any, Any]], Awaitable[Reply]],
    *,
    torchserve: bool,
) -> Callable[[Request, grpc.aio.ServicerContext[Any, Any]], Awaitable[Reply]]:
    async def call(request: Request, context: grpc.aio.ServicerContext[Any, Any]) -> Reply:
        try:
            return await method(request, context)
        except ApiError as error:
            await context.abort(error_code(error, torchserve=torchserve), error.message)
            raise AssertionError("abort returned") from None  # abort always raises

    return call


def form_body(inputs: Mapping[str, bytes]) -> tuple[bytes, str]:
    """A PredictionsRequest's input map as a multipart body (one field per entry)."""
    parts = []
    for name, value in inputs.items():
        parts.append(
            f'--{_FORM_BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + value
            + b"\r\n"
        )
    parts.append(f"--{_FORM_BOUNDARY}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={_FORM_BOUNDARY}"


class TorchServeInference:
    """TorchServe's InferenceAPIsService on the data plane."""

    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            TS_INFERENCE,
            {
                "Ping": grpc.unary_unary_rpc_method_handler(
                    _api_errors(self.ping, torchserve=True),
                    request_deserializer=empty_pb2.Empty.FromString,
                    response_serializer=ts.TorchServeHealthResponse.SerializeToString,
                ),
                "Predictions": grpc.unary_unary_rpc_method_handler(
                    _api_errors(self.predictions, torchserve=True),
                    request_deserializer=ts.PredictionsRequest.FromString,
                    response_serializer=ts.PredictionResponse.SerializeToString,
                ),
                "StreamPredictions": grpc.unary_stream_rpc_method_handler(
                    self.stream_predictions,
                    request_deserializer=ts.PredictionsRequest.FromString,
                    response_serializer=ts.PredictionResponse.SerializeToString,
                ),
                "StreamPredictions2": grpc.stream_stream_rpc_method_handler(
                    self.stream_predictions2,
                    request_deserializer=ts.PredictionsRequest.FromString,
                    response_serializer=ts.PredictionResponse.SerializeToString,
                ),
            },
        )

    async def ping(
        self, request: empty_pb2.Empty, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ts.TorchServeHealthResponse:
        self._plane.authorize("inference", metadata_headers(context).get("authorization"))
        # as TorchServe: status OK either way, the verdict is in the message (HTTP's is a 500)
        health = "Healthy" if self._plane.healthy() else "Unhealthy"
        return ts.TorchServeHealthResponse(health=json.dumps({"status": health}, indent=2))

    def _call(
        self, request: ts.PredictionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Call:
        headers = metadata_headers(context)
        self._plane.authorize("inference", headers.get("authorization"))
        if not request.model_name:
            raise ApiError(400, "Parameter model_name is required.")
        body, content_type = form_body(request.input)
        return Call(
            request.model_name,
            request.model_version or None,
            body,
            content_type,
            headers,
            {},
            time.perf_counter(),
        )

    async def predictions(
        self, request: ts.PredictionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ts.PredictionResponse:
        result = await self._plane.predict(self._call(request, context))
        if result.rest is not None:  # a unary call gets the final answer only
            async for part in result.rest:
                result = part
        if result.status >= 400:
            await _abort(context, result.status, _error_message(result))
        return ts.PredictionResponse(prediction=result.body)

    async def stream_predictions(
        self, request: ts.PredictionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[ts.PredictionResponse]:
        try:
            async for part in self._parts(self._call(request, context)):
                if part.status >= 400:
                    await _abort(context, part.status, _error_message(part))
                yield ts.PredictionResponse(prediction=part.body)
        except ApiError as error:
            await context.abort(error_code(error, torchserve=True), error.message)

    async def stream_predictions2(
        self,
        requests: AsyncIterator[ts.PredictionsRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[ts.PredictionResponse]:
        async for request in requests:
            sequence = request.sequence_id if request.HasField("sequence_id") else None
            try:
                async for part in self._parts(self._call(request, context)):
                    if part.status >= 400:
                        status = _status_message(status_code(part.status), _error_message(part))
                        yield ts.PredictionResponse(sequence_id=sequence, status=status)
                    else:
                        yield ts.PredictionResponse(prediction=part.body, sequence_id=sequence)
            except ApiError as error:
                status = _status_message(error_code(error, torchserve=True), error.message)
                yield ts.PredictionResponse(sequence_id=sequence, status=status)

    async def _parts(self, call: Call) -> AsyncIterator[ItemResult]:
        """Every part of the answer; the work stops if the client leaves."""
        result = await self._plane.predict(call)
        yield result
        if result.rest is None:
            return
        try:
            async for part in result.rest:
                yield part
        except StreamBroken as broken:
            yield broken.result
        finally:
            result.rest.close()


def _status_message(code: grpc.StatusCode, message: str) -> Any:
    return status_pb2.Status(code=code.value[0], message=message)


class OpenInference:
    """The Open Inference Protocol's GRPCInferenceService on the data plane."""

    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        methods: dict[str, tuple[Any, Any, Any]] = {
            "ServerLive": (self.server_live, oip.ServerLiveRequest, oip.ServerLiveResponse),
            "ServerReady": (self.server_ready, oip.ServerReadyRequest, oip.ServerReadyResponse),
            "ModelReady": (self.model_ready, oip.ModelReadyRequest, oip.ModelReadyResponse),
            "ServerMetadata": (
                self.server_metadata,
                oip.ServerMetadataRequest,
                oip.ServerMetadataResponse,
            ),
            "ModelMetadata": (
                self.model_metadata,
                oip.ModelMetadataRequest,
                oip.ModelMetadataResponse,
            ),
            "ModelInfer": (self.model_infer, oip.ModelInferRequest, oip.ModelInferResponse),
        }
        table = {
            name: grpc.unary_unary_rpc_method_handler(
                _api_errors(method, torchserve=False),
                request_deserializer=request.FromString,
                response_serializer=reply.SerializeToString,
            )
            for name, (method, request, reply) in methods.items()
        }
        return [grpc.method_handlers_generic_handler(service, table) for service in OIP_SERVICES]

    def _authorize(self, context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, str]:
        headers = metadata_headers(context)
        self._plane.authorize("inference", headers.get("authorization"))
        return headers

    async def server_live(
        self, request: oip.ServerLiveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> oip.ServerLiveResponse:
        return oip.ServerLiveResponse(live=True)

    async def server_ready(
        self, request: oip.ServerReadyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> oip.ServerReadyResponse:
        return oip.ServerReadyResponse(ready=self._plane.healthy())

    async def model_ready(
        self, request: oip.ModelReadyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> oip.ModelReadyResponse:
        self._authorize(context)
        entry = self._plane.model(request.name, request.version or None)
        return oip.ModelReadyResponse(ready=entry.healthy)

    async def server_metadata(
        self, request: oip.ServerMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> oip.ServerMetadataResponse:
        return oip.ServerMetadataResponse(**self._plane.server_metadata())

    async def model_metadata(
        self, request: oip.ModelMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> oip.ModelMetadataResponse:
        self._authorize(context)
        metadata = self._plane.model_metadata(request.name, request.version or None)
        tensor = oip.ModelMetadataResponse.TensorMetadata
        return oip.ModelMetadataResponse(
            name=metadata["name"],
            versions=metadata["versions"],
            platform=metadata["platform"],
            inputs=[tensor(**entry) for entry in metadata["inputs"]],
            outputs=[tensor(**entry) for entry in metadata["outputs"]],
        )

    async def model_infer(
        self, request: oip.ModelInferRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> oip.ModelInferResponse:
        headers = self._authorize(context)
        received_at = time.perf_counter()
        self._plane.model(request.model_name, request.model_version or None)
        try:
            document, binary = v2_document(request)
            parsed = kserve_v2.validate(document, binary)
        except kserve_v2.V2Error as error:
            raise ApiError(400, f"Invalid KServe v2 request: {error}") from None
        call = Call(
            request.model_name,
            request.model_version or None,
            json.dumps(_as_torchserve_sends(parsed.document)).encode(),
            "application/json",
            headers,
            {},
            received_at,
            explain=None,  # TorchServe's ModelInfer sets no explain property
        )
        result, answer = await self._plane.infer_v2(call, parsed)
        if answer is None:
            raise ApiError(result.status, _error_message(result))
        return v2_response(answer, raw=bool(request.raw_input_contents))


def _parameters(parameters: Mapping[str, oip.InferParameter]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is not None:
            values[key] = getattr(parameter, choice)
    return values


def v2_document(request: oip.ModelInferRequest) -> tuple[dict[str, Any], bytes]:
    """A ModelInferRequest as the v2 JSON document (+ binary) that `kserve_v2.validate` checks."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise kserve_v2.V2Error(
            f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs: send one per input"
        )
    inputs = []
    for index, tensor in enumerate(request.inputs):
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
            "parameters": _parameters(tensor.parameters),
        }
        if raw:
            entry["parameters"]["binary_data_size"] = len(raw[index])
        else:
            field = _CONTENTS.get(tensor.datatype)
            if field is None:
                raise kserve_v2.V2Error(
                    f"input {tensor.name!r}: {tensor.datatype} needs raw_input_contents"
                )
            values = list(getattr(tensor.contents, field))
            if tensor.datatype == "BYTES":
                values = [value.decode("utf-8", "replace") for value in values]
            entry["data"] = values
        inputs.append(entry)
    document: dict[str, Any] = {
        "inputs": inputs,
        "parameters": _parameters(request.parameters),
        "outputs": [
            {"name": output.name, "parameters": _parameters(output.parameters)}
            for output in request.outputs
        ],
    }
    document["id"] = request.id or uuid.uuid4().hex
    return document, b"".join(raw)


def _as_torchserve_sends(document: dict[str, Any]) -> dict[str, Any]:
    """The validated document with each input's keys in the order TorchServe's gRPC frontend
    writes them (shape, data, datatype, name), parameters only where there are some."""
    inputs = []
    for tensor in document["inputs"]:
        entry = {key: tensor[key] for key in ("shape", "data", "datatype", "name")}
        if tensor.get("parameters"):
            entry["parameters"] = tensor["parameters"]
        inputs.append(entry)
    return {**document, "inputs": inputs}


def _bytes_element(item: Any) -> bytes:
    """One BYTES element: bytes as they are, text as UTF-8, anything else as compact JSON (as
    TorchServe writes a handler's structured result)."""
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode()
    return json.dumps(item, separators=(",", ":")).encode()


def v2_response(answer: Mapping[str, Any], *, raw: bool) -> oip.ModelInferResponse:
    """The v2 response document as a ModelInferResponse (raw or typed output contents)."""
    response = oip.ModelInferResponse(
        model_name=str(answer.get("model_name", "")),
        model_version=str(answer.get("model_version", "")),
        id=str(answer.get("id", "")),
    )
    for output in answer.get("outputs", []):
        datatype = str(output.get("datatype", "BYTES"))
        tensor = response.outputs.add(name=str(output.get("name", "")), datatype=datatype)
        tensor.shape.extend(int(d) for d in output.get("shape", []))
        data = np.asarray(output.get("data", []), dtype=object).reshape(-1).tolist()
        if raw:
            response.raw_output_contents.append(_raw(datatype, data))
        elif datatype == "BYTES":
            tensor.contents.bytes_contents.extend(_bytes_element(item) for item in data)
        else:
            getattr(tensor.contents, _CONTENTS[datatype]).extend(data)
    return response


def _raw(datatype: str, data: list[Any]) -> bytes:
    if datatype == "BYTES":
        encoded = [_bytes_element(item) for item in data]
        return b"".join(len(item).to_bytes(4, "little") + item for item in encoded)
    return np.asarray(data, dtype=kserve_v2.numpy_type(datatype)).tobytes()


def inference_handlers(plane: DataPlane) -> list[grpc.GenericRpcHandler]:
    """Both inference services of `grpc_inference_port`."""
    return [TorchServeInference(plane).handler(), *OpenInference(plane).handlers()]
