"""Test handler: echoes JSON bodies, sleeps when asked, and reports its batch and process.

`{"sleep": 1.5}` sleeps that long and `{"pad": 5000000}` adds that many bytes to the answer
(also as JSON bytes, as gRPC's input map gives them); every answer carries the batch size it
was part of, the worker's pid and the request id its context was given, so tests can see
batching, worker restarts and request ids from outside.
"""

import json
import os
import time
from typing import Any


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[dict[str, Any]] | None:
    if data is None:
        return None
    context.metrics.add_counter("RowsProcessed", len(data))
    answers = []
    for index, row in enumerate(data):
        body = row.get("body")
        if isinstance(body, dict) and "sleep" in body:
            time.sleep(float(body["sleep"]))
        asked = body
        if isinstance(body, (bytes, bytearray)):
            try:
                asked = json.loads(body)
            except ValueError:
                asked = None
        pad = asked.get("pad", 0) if isinstance(asked, dict) else 0
        answers.append(
            {
                **({"pad": "x" * int(pad)} if pad else {}),
                "echo": body if isinstance(body, (dict, list, str, int, float)) else None,
                "batch": len(data),
                "pid": os.getpid(),
                "explain": context.get_request_header(index, "explain"),
                "request_id": context.get_request_id(index),
            }
        )
    return answers
