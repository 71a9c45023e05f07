"""KServe v2 request checks and response shaping (the binary tensor extension included)."""

from __future__ import annotations

import json
import re
import struct

import numpy as np
import pytest
from marfleet.runtime.server.kserve_v2 import (
    HEADER_LENGTH,
    V2Error,
    V2Request,
    declared_tensors,
    encode_json,
    parse_request,
    response_document,
)


def build_response(
    request: V2Request, model: str, version: str, body: bytes
) -> tuple[bytes, dict[str, str]]:
    return encode_json(response_document(request, model, version, body), request)


def encode(document: dict[str, object], binary: bytes = b"") -> tuple[bytes, dict[str, str]]:
    header = json.dumps(document).encode()
    headers = {HEADER_LENGTH: str(len(header))} if binary else {}
    return header + binary, headers


def test_binary_inputs_become_json_data() -> None:
    values = np.arange(6, dtype=np.float32)
    words = b"".join(struct.pack("<I", len(w)) + w for w in (b"ab", b"cde"))
    body, headers = encode(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2, 3],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 24},
                },
                {
                    "name": "w",
                    "shape": [2],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(words)},
                },
            ]
        },
        values.tobytes() + words,
    )
    request = parse_request(body, headers)
    x, w = request.document["inputs"]
    assert x["data"] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0] and x["parameters"] == {}
    assert w["data"] == ["ab", "cde"]


@pytest.mark.parametrize(
    ("document", "binary", "fragment"),
    [
        (
            {"inputs": [{"name": "x", "shape": [2], "datatype": "INT32", "data": [[1], [2], [3]]}]},
            b"",
            "needs 2 elements, data has 3",
        ),
        (
            {"inputs": [{"name": "x", "shape": [-1], "datatype": "INT32", "data": [1]}]},
            b"",
            "non-negative",
        ),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "INT32"}]}, b"", "has no data"),
        (
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [2],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": 8},
                    }
                ]
            },
            b"\0" * 4,
            "exceeds",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [3],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": 8},
                    }
                ]
            },
            b"\0" * 8,
            "do not make 3",
        ),
        (
            {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]},
            b"\0" * 4,
            "no input claims",
        ),
        (
            {
                "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
                "outputs": [{}],
            },
            b"",
            '"outputs" needs a "name"',
        ),
    ],
)
def test_malformed_requests_name_the_problem(
    document: dict[str, object], binary: bytes, fragment: str
) -> None:
    body, headers = encode(document, binary)
    if binary and not headers:
        headers = {HEADER_LENGTH: str(len(json.dumps(document)))}
    with pytest.raises(V2Error) as raised:
        parse_request(body, headers)
    assert fragment in str(raised.value)


def test_plain_handler_value_becomes_one_inferred_tensor() -> None:
    request = parse_request(
        *encode(
            {"id": "7", "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}
        )
    )
    body, headers = build_response(request, "m", "1.0", json.dumps([[1.5, 2.5]]).encode())
    assert headers == {}
    assert json.loads(body) == {
        "outputs": [{"name": "output-0", "datatype": "FP32", "shape": [1, 2], "data": [1.5, 2.5]}],
        "model_name": "m",
        "model_version": "1.0",
        "id": "7",
    }


def test_requested_binary_output_uses_the_extension_layout() -> None:
    request = parse_request(
        *encode(
            {
                "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
                "outputs": [{"name": "scores", "parameters": {"binary_data": True}}],
            }
        )
    )
    body, headers = build_response(request, "m", "1.0", json.dumps([1, 2, 3]).encode())
    split = int(headers[HEADER_LENGTH])
    header = json.loads(body[:split])
    (output,) = header["outputs"]
    assert output["name"] == "scores" and output["datatype"] == "INT64"
    assert output["parameters"] == {"binary_data_size": 24}
    assert np.frombuffer(body[split:], dtype=np.int64).tolist() == [1, 2, 3]


def test_a_full_v2_answer_from_the_handler_is_kept() -> None:
    request = parse_request(
        *encode({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]})
    )
    answer = {
        "model_name": "custom",
        "outputs": [{"name": "y", "datatype": "BYTES", "shape": [1], "data": ["ok"]}],
    }
    body, _ = build_response(request, "m", "1.0", json.dumps(answer).encode())
    assert json.loads(body) == {**answer, "model_version": "1.0"}


def _one_input(datatype: str, shape: list[int], data: object) -> dict[str, object]:
    return {"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data}]}


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        (_one_input("FP32", [2**32, 2**32], []), "more elements than int64"),
        (_one_input("INT64", [2**40, 2**40, 2**40], []), "more elements than int64"),
        (_one_input("FP32", [2], [1.0, "two"]), "FP32 data must be numbers, got strings"),
        (_one_input("INT32", [2], ["1", "2"]), "got strings"),
        (_one_input("INT32", [2], [1, None]), "mixed or non-numeric"),
        (_one_input("INT32", [2], [1, 2.5]), "whole numbers or booleans, got fractional"),
        (_one_input("INT32", [4], [[1, 2], [3]]), "ragged"),
        (_one_input("FP32", [3], [[1.0], [2.0, 3.0]]), "ragged"),
        (_one_input("BYTES", [3], [["a"], ["b", "c"]]), "ragged"),
        (_one_input("INT32", [1], [float("nan")]), "fractional"),
        (_one_input("FP32", [True], [1.0]), "non-negative integers"),
    ],
)
def test_tensor_data_is_checked_strictly(document: dict[str, object], fragment: str) -> None:
    body, headers = encode(document)
    with pytest.raises(V2Error) as raised:
        parse_request(body, headers)
    assert fragment in str(raised.value)


def test_a_truncated_bytes_element_is_refused() -> None:
    raw = struct.pack("<I", 100) + b"short"
    body, headers = encode(
        {
            "inputs": [
                {
                    "name": "w",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        },
        raw,
    )
    with pytest.raises(V2Error, match="truncated BYTES element"):
        parse_request(body, headers)


def test_non_finite_floats_are_allowed_in_fp_tensors_only() -> None:
    body = b'{"inputs": [{"name": "x", "shape": [3], "datatype": "FP64", '
    body += b'"data": [NaN, Infinity, -Infinity]}]}'
    (tensor,) = parse_request(body, {}).document["inputs"]
    assert np.isnan(tensor["data"][0]) and tensor["data"][1:] == [np.inf, -np.inf]
    with pytest.raises(V2Error, match="whole numbers"):
        parse_request(body.replace(b"FP64", b"INT64"), {})


def test_nesting_deeper_than_the_limit_is_refused_before_parsing() -> None:
    data = "[" * 40 + "1" + "]" * 40
    body = json.dumps(_one_input("FP32", [1], "DATA")).replace('"DATA"', data)
    assert parse_request(body.encode(), {}, max_depth=64)  # 42 levels in all
    with pytest.raises(V2Error, match="max_json_depth"):
        parse_request(body.encode(), {}, max_depth=30)
    deep = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(V2Error, match="max_json_depth"):
        parse_request(deep, {})


def test_regular_nested_data_is_still_accepted() -> None:
    request = parse_request(*encode(_one_input("INT32", [2, 2], [[1, 2], [3, True]])))
    assert request.document["inputs"][0]["data"] == [[1, 2], [3, True]]
    request = parse_request(*encode(_one_input("BYTES", [2, 1], [["a"], ["b"]])))
    assert request.document["inputs"][0]["data"] == [["a"], ["b"]]


def test_declared_tensors_come_from_model_config() -> None:
    config = {
        "batchSize": 4,
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, 10]}],
    }
    assert declared_tensors(config) == {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, 10]}],
    }
    assert declared_tensors({}) == {"inputs": [], "outputs": []}


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"inputs": {"name": "x"}}, "inputs must be a list"),
        ({"outputs": [{"name": "x", "datatype": "FP32"}]}, "outputs[0] must have exactly"),
        ({"inputs": [{"name": "", "datatype": "FP32", "shape": [1]}]}, "name must be"),
        ({"inputs": [{"name": "x", "datatype": "F32", "shape": [1]}]}, "datatype 'F32'"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-2]}]}, "-1 or more"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": "1"}]}, "shape must be"),
    ],
)
def test_wrong_tensor_declarations_name_the_entry(config: dict[str, object], fragment: str) -> None:
    with pytest.raises(V2Error, match=re.escape(fragment)):
        declared_tensors(config)
