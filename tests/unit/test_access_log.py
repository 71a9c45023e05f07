"""The access log writes one JSON object per request by hand (for speed): each line must parse,
carry the request id the answer carried, and escape whatever a client put in its fields."""

from __future__ import annotations

import asyncio
import io
import json

from marfleet.runtime.server.http import Request, Response
from marfleet.runtime.server.logs import AccessLog


def logged(path: str, headers: dict[str, str]) -> dict[str, object]:
    stream = io.StringIO()

    async def one() -> None:
        request = Request("POST", path, "", headers, b"abc", "10.0.0.7", received_at=0.0)
        AccessLog(stream, "inference")(request, Response(201, b"{}"))

    asyncio.run(one())
    (line,) = stream.getvalue().splitlines()
    record: dict[str, object] = json.loads(line)
    return record


def test_a_line_names_the_request_and_its_id() -> None:
    record = logged("/predictions/m", {"x-request-id": 'a"b\\c', "authorization": "Bearer k"})
    assert record["request_id"] == 'a"b\\c'
    assert (record["api"], record["method"], record["path"], record["status"]) == (
        "inference",
        "POST",
        "/predictions/m",
        201,
    )
    assert (record["request_bytes"], record["response_bytes"], record["client"]) == (
        3,
        2,
        "10.0.0.7",
    )
    assert "Bearer k" not in json.dumps(record)  # no other header reaches the log


def test_a_request_without_an_id_logs_an_empty_one() -> None:
    assert logged("/ping\u2603", {})["request_id"] == ""
