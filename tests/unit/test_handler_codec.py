"""Requests into handler rows and results into bodies, as TorchServe 0.12 does it."""

from __future__ import annotations

import io
import json

import pytest
import torch
from marfleet.runtime.handlers.codec import (
    decode_body,
    encode_output,
    error_body,
    handler_row,
    request_properties,
)
from marfleet.runtime.handlers.messages import InferenceRequest


def request(
    body: bytes, content_type: str, form: dict[str, bytes] | None = None
) -> InferenceRequest:
    return InferenceRequest("r1", body, content_type, {"x-trace": "t"}, {"q": "1"}, form)


@pytest.mark.parametrize(
    ("body", "content_type", "value"),
    [
        (b'{"a": [1, 2]}', "application/json; charset=utf-8", {"a": [1, 2]}),
        (b"hello", "text/plain", "hello"),
        (b"\x89PNG", "image/png", b"\x89PNG"),
        (b"{not json", "application/json", b"{not json"),
        (b"\xff\xfe", "text/plain", b"\xff\xfe"),
        (b"raw", "", b"raw"),
    ],
)
def test_body_decoding_follows_the_content_type(
    body: bytes, content_type: str, value: object
) -> None:
    assert decode_body(body, content_type) == value


def test_a_plain_body_is_the_body_key_and_query_parameters_stay_out() -> None:
    assert handler_row(request(b"[1, 2]", "application/json")) == {"body": [1, 2]}


def test_a_form_is_one_bytes_key_per_field() -> None:
    row = handler_row(request(b"", "multipart/form-data", {"data": b"\x00img", "name": b"val"}))
    assert row == {"data": b"\x00img", "name": b"val"}


def test_request_properties_carry_content_types_headers_and_explain() -> None:
    assert request_properties(request(b"{}", "application/json; charset=utf-8"), explain=True) == {
        "body": {"content-type": "application/json"},
        "x-trace": "t",
        "explain": "True",
    }
    form = request(b"", "multipart/form-data", {"data": b""})
    assert request_properties(form, explain=False) == {
        "data": {"content-type": ""},
        "x-trace": "t",
        "explain": "False",
    }


def test_outputs_encode_as_torchserve_encodes_them() -> None:
    assert encode_output(b"\x00raw") == b"\x00raw"
    assert encode_output(bytearray(b"ab")) == b"ab"
    assert encode_output("héllo") == "héllo".encode()
    assert encode_output({"ok": [1.5, 2]}) == b'{\n  "ok": [\n    1.5,\n    2\n  ]\n}'
    tensor = torch.arange(3)
    assert torch.equal(torch.load(io.BytesIO(encode_output(tensor))), tensor)
    with pytest.raises(TypeError):
        encode_output(object())


def test_error_body_is_torchserves() -> None:
    assert json.loads(error_body(503, "Prediction failed")) == {
        "code": 503,
        "type": "InternalServerException",
        "message": "Prediction failed",
    }
