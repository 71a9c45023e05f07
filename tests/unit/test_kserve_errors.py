"""`errors.with_kserve_error`: which answers gain KServe's `"error"` field, and which stay as
they were (tests/integration/test_kserve_differential.py compares the result with KServe)."""

from __future__ import annotations

import json

import pytest
from marfleet.runtime.server.errors import (
    error_body,
    error_response,
    pretty_json,
    speaks_kserve,
    with_kserve_error,
)
from marfleet.runtime.server.http import Response, StreamedResponse


@pytest.mark.parametrize(
    ("path", "kserve"),
    [
        ("/v2", True),
        ("/v2/models/m/infer", True),
        ("/v1/models/m:predict", True),
        ("/v1/models", True),
        ("/v2x", False),
        ("/v1", False),
        ("/predictions/m", False),
        ("/ping", False),
    ],
)
def test_kserve_paths(path: str, kserve: bool) -> None:
    assert speaks_kserve(path) is kserve


def test_torchserve_error_gains_the_same_reason_as_error() -> None:
    answer = with_kserve_error(error_response(404, "Model not found: m", headers={"A": "b"}))
    assert json.loads(answer.body) == {
        "code": 404,
        "type": "ResourceNotFoundException",
        "message": "Model not found: m",
        "error": "Model not found: m",
    }
    assert answer.body.endswith(b"}\n") and b'\n  "error"' in answer.body  # TorchServe's layout
    assert (answer.status, answer.content_type) == (404, "application/json")
    assert answer.headers == {"A": "b"}


@pytest.mark.parametrize(
    "answer",
    [
        Response(200, pretty_json({"code": 1, "type": "t", "message": "fine"})),  # not an error
        Response(400, pretty_json({"error": "a handler's own document"})),
        Response(400, pretty_json({"code": 400, "type": "x", "message": "m", "detail": "more"})),
        Response(500, b"plain text", "text/plain"),
        Response(500, b"{broken", "application/json"),
        Response(500, pretty_json(["a", "list"])),
        Response(500, error_body(500, "x" * 70_000)),  # larger than any error the server makes
        StreamedResponse(500, error_body(500, "streamed")),
    ],
)
def test_other_answers_are_left_alone(answer: Response) -> None:
    assert with_kserve_error(answer) is answer
