"""The `Context` a handler receives in `initialize` and `handle`, shaped as TorchServe's.

Handlers read `context.system_properties["model_dir"]`, call
`context.get_request_header(idx, name)` and `context.set_response_status(...)`, and unit tests
construct `Context(model_name, model_dir, manifest, batch_size, gpu, version)` directly, so the
constructor, attribute and method names are TorchServe's. Two deliberate differences: request
header look-ups ignore case (HTTP header names are case-insensitive and marfleet's server
lower-cases them), and `server_name` can be given.
"""

from __future__ import annotations

from typing import Any

from marfleet.runtime.handlers.metrics import HandlerMetrics
from marfleet.runtime.handlers.streaming import OtfSocket, PartSink


class RequestProcessor:
    """One request's headers and the status and headers its response will carry."""

    def __init__(self, request_header: dict[str, Any]) -> None:
        self._status_code = 200
        self._reason_phrase: str | None = None
        self._response_header: dict[str, str] = {}
        self._request_header = request_header

    def get_request_property(self, key: str) -> Any:
        if key in self._request_header:
            return self._request_header[key]
        lowered = key.lower()
        for name, value in self._request_header.items():
            if name.lower() == lowered:
                return value
        return None

    def get_request_properties(self) -> dict[str, Any]:
        return self._request_header

    def report_status(self, code: int, reason_phrase: str | None = None) -> None:
        self._status_code = code
        self._reason_phrase = reason_phrase

    def get_response_status_code(self) -> int:
        return self._status_code

    def get_response_status_phrase(self) -> str | None:
        return self._reason_phrase

    def add_response_property(self, key: str, value: str) -> None:
        self._response_header[key] = value

    def get_response_headers(self) -> dict[str, str]:
        return self._response_header

    def get_response_header(self, key: str) -> str | None:
        return self._response_header.get(key)


class Context:
    """What a handler knows about its model, its worker and the requests of the current batch."""

    def __init__(
        self,
        model_name: str,
        model_dir: str,
        manifest: dict[str, Any] | None,
        batch_size: int,
        gpu: int | None,
        mms_version: str,
        limit_max_image_pixels: bool | int = True,
        metrics: HandlerMetrics | None = None,
        model_yaml_config: dict[str, Any] | None = None,
        server_name: str = "MMS",
    ) -> None:
        self.model_name = model_name
        self.manifest = manifest
        self._system_properties: dict[str, Any] = {
            "model_dir": model_dir,
            "gpu_id": gpu,
            "batch_size": batch_size,
            "server_name": server_name,
            "server_version": mms_version,
            "limit_max_image_pixels": limit_max_image_pixels,
        }
        self.request_ids: dict[int, str] | None = None
        self._request_processor: list[RequestProcessor] = []
        self.metrics = metrics if metrics is not None else HandlerMetrics()
        self.model_yaml_config: dict[str, Any] = model_yaml_config or {}
        self.part_sink: PartSink | None = None  # set by the worker for each batch (streaming.py)
        self.stopping_criteria: list[Any] | None = None  # read by TorchServe's streaming call

    @property
    def system_properties(self) -> dict[str, Any]:
        return self._system_properties

    @property
    def cl_socket(self) -> OtfSocket:
        """Where TorchServe's own `send_intermediate_predict_response` writes its parts."""
        if self.part_sink is None:
            raise RuntimeError("intermediate responses can only be sent while handling a batch")
        return OtfSocket(self.part_sink, lambda: self.request_ids)

    @property
    def request_processor(self) -> list[RequestProcessor]:
        return self._request_processor

    @request_processor.setter
    def request_processor(self, request_processor: list[RequestProcessor]) -> None:
        self._request_processor = request_processor

    def get_request_id(self, idx: int = 0) -> str | None:
        if self.request_ids is None:
            return None
        return self.request_ids.get(idx)

    def get_request_header(self, idx: int, key: str) -> Any:
        return self._request_processor[idx].get_request_property(key)

    def get_all_request_header(self, idx: int) -> dict[str, Any]:
        return self._request_processor[idx].get_request_properties()

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.set_response_header(idx, "content-type", value)

    def get_response_content_type(self, idx: int) -> str | None:
        return self.get_response_headers(idx).get("content-type")

    def get_response_status(self, idx: int) -> tuple[int, str | None]:
        processor = self._request_processor[idx]
        return processor.get_response_status_code(), processor.get_response_status_phrase()

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        if idx < len(self._request_processor):
            self._request_processor[idx].report_status(code, reason_phrase=phrase)

    def set_all_response_status(self, code: int = 200, phrase: str = "") -> None:
        for processor in self._request_processor:
            processor.report_status(code, reason_phrase=phrase)

    def get_response_headers(self, idx: int) -> dict[str, str]:
        return self._request_processor[idx].get_response_headers()

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        self._request_processor[idx].add_response_property(key, value)
