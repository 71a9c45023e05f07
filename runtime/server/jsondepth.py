"""How deep a JSON request body nests, found before anything parses it.

Why: Python's json module recurses once per nesting level, so `[[[[...]]]]` a few thousand
levels deep is a RecursionError (a 500, or a failed batch in a worker) and costs a stack per
level. The frontend refuses such a body with a 400 that names the limit (`max_json_depth`)
before it reaches the parser or a worker. The check must be cheap on the hot path: a body with
fewer brackets than the limit cannot nest deeper and is not scanned; otherwise the scan is
vectorised (bytes.translate keeps only brackets and quotes, numpy sums them), a few ms per MB.
"""

from __future__ import annotations

import re

import numpy as np

DEFAULT_MAX_DEPTH = 64
_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_DELETE = bytes(b for b in range(256) if b not in b'[]{}"')
_OPEN = np.zeros(256, np.int8)
_OPEN[list(b"[{")] = 1
_OPEN[list(b"]}")] = -1


class TooDeep(ValueError):
    """The body nests deeper than the limit; the message names the limit and its key."""


def nesting(body: bytes) -> int:
    """The deepest nesting of arrays and objects in `body`, brackets inside strings ignored."""
    if b"\\" in body:
        body = _ESCAPE.sub(b"", body)  # an escaped quote must not end a string
    compact = np.frombuffer(body.translate(None, _DELETE), np.uint8)
    if not len(compact):
        return 0
    inside_string = np.cumsum(compact == ord('"')) % 2 == 1
    steps = np.where(inside_string, 0, _OPEN[compact]).astype(np.int64)
    return int(np.cumsum(steps).max(initial=0))


def check_depth(body: bytes, limit: int) -> None:
    """Raise TooDeep when `body` (JSON text, maybe invalid) nests more than `limit` levels."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return
    if nesting(body) > limit:
        raise TooDeep(
            f"the JSON body nests deeper than {limit} levels (max_json_depth); "
            "flatten it or raise max_json_depth"
        )
