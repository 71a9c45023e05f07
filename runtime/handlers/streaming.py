"""Intermediate responses: a handler sends parts of its answer before it returns the last one.

TorchServe handlers stream (token by token, say) by calling
`send_intermediate_predict_response(ret, req_id_map, message, code, context)` with one value per
request of the batch, then return the final values as usual. Two functions of that name reach
marfleet's worker: this module's (what `ts.protocol.otf_message_handler` resolves to through the
ts shim), which hands each part to the worker at once, and, when TorchServe itself is installed,
TorchServe's own, which serialises its binary "predict response" and writes it to
`context.cl_socket`. `OtfSocket` is that socket: it parses the message and hands the same parts
to the same place, so a handler works unchanged with either import.

The worker's sink raises `RequestCancelled` (errors.py) once every request of the batch has been
abandoned by its client, which ends the handler's loop at its next part instead of generating
for nobody.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any

from marfleet.runtime.handlers.codec import encode_output
from marfleet.runtime.handlers.messages import InferenceResult

PartSink = Callable[[int, InferenceResult], None]  # (index in the batch, part)
_INT = struct.Struct("!i")


def send_intermediate_predict_response(
    ret: list[Any], req_id_map: Mapping[int, str], message: str, code: int, context: Any
) -> None:
    """Send `ret[idx]` for every request of the batch now, as a part of its streamed answer."""
    sink: PartSink | None = getattr(context, "part_sink", None)
    if sink is None:
        raise RuntimeError("send_intermediate_predict_response needs the handler's context")
    for idx in req_id_map:
        status, _ = context.get_response_status(idx)
        headers = dict(context.get_response_headers(idx))
        content_type = _pop_content_type(headers)
        sink(idx, InferenceResult(status or code, encode_output(ret[idx]), content_type, headers))


class OtfSocket:
    """`context.cl_socket` for TorchServe's own `send_intermediate_predict_response`."""

    def __init__(self, sink: PartSink, request_ids: Callable[[], Mapping[int, str] | None]) -> None:
        self._sink = sink
        self._request_ids = request_ids

    def sendall(self, message: bytes) -> None:
        index = {request_id: idx for idx, request_id in (self._request_ids() or {}).items()}
        reader = _Reader(message)
        reader.number()  # the batch's code; each request carries its own below
        reader.text()  # the batch's message
        while True:
            length = reader.number()
            if length < 0:
                return
            request_id = reader.raw(length).decode()
            content_type = reader.text()
            status = reader.number()
            reader.text()  # reason phrase
            headers = {reader.text(): reader.text() for _ in range(reader.number())}
            headers.pop("ts_stream_next", None)
            _pop_content_type(headers)
            body = reader.raw(reader.number())
            if request_id in index:
                self._sink(index[request_id], InferenceResult(status, body, content_type, headers))


def _pop_content_type(headers: dict[str, str]) -> str:
    content_type = ""
    for name in list(headers):
        if name.lower() == "content-type":
            content_type = headers.pop(name)
    return content_type


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._at = 0

    def number(self) -> int:
        (value,) = _INT.unpack_from(self._data, self._at)
        self._at += _INT.size
        return int(value)

    def raw(self, length: int) -> bytes:
        value = bytes(self._data[self._at : self._at + length])
        self._at += length
        return value

    def text(self) -> str:
        return self.raw(self.number()).decode("utf-8")
