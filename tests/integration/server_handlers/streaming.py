"""Test handler: answers in parts, `send_intermediate_predict_response` between them.

Body `{"parts": 5, "delay": 0.3, "log": "/path", "via": "ts"}` sends parts 0..parts-2 as
intermediate responses `delay` seconds apart and returns the last one; each part is
`{"part": i}` followed by a newline. `log` names a file that gets one line per part sent, so a
test can see when the handler stopped. `via` picks the function: TorchServe's own (`ts`, its
`context.cl_socket` path when TorchServe is installed) or marfleet's.
"""

import json
import time
from typing import Any


def _sender(via: str) -> Any:
    if via == "marfleet":
        from marfleet.runtime.handlers import streaming

        return streaming.send_intermediate_predict_response
    from ts.protocol import otf_message_handler

    return otf_message_handler.send_intermediate_predict_response


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[str] | None:
    if data is None:
        return None
    body = data[0].get("body", data[0].get("data")) or {}
    if isinstance(body, (bytes, bytearray)):  # gRPC inputs reach handlers as bytes
        body = json.loads(body)
    parts, delay = int(body.get("parts", 5)), float(body.get("delay", 0.3))
    send = _sender(str(body.get("via", "ts")))
    log = body.get("log")
    for index in range(parts - 1):
        send([json.dumps({"part": index}) + "\n"], context.request_ids, "part", 200, context)
        if log:
            with open(log, "a") as handle:
                handle.write(f"{index}\n")
        time.sleep(delay)
    return [json.dumps({"part": parts - 1}) + "\n"]
