"""The JSON nesting check the frontend runs before any parser or worker sees a body."""

from __future__ import annotations

import json

import pytest
from marfleet.runtime.server.jsondepth import TooDeep, check_depth, nesting


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("1", 0),
        ("[]", 1),
        ('{"a": [1, [2, {"b": 3}]]}', 4),
        ('["[[[[", "{{{"]', 1),  # brackets inside strings do not count
        (r'["\"[[[", [1]]', 2),  # nor after an escaped quote
        (r'["\\", [[1]]]', 3),  # an escaped backslash ends before the quote
        ("", 0),
    ],
)
def test_nesting_counts_only_structure(text: str, depth: int) -> None:
    assert nesting(text.encode()) == depth


def test_deep_bodies_are_refused_and_wide_ones_are_not() -> None:
    with pytest.raises(TooDeep, match="max_json_depth"):
        check_depth(b"[" * 1_000_000, 64)
    wide = json.dumps([[i, i + 1] for i in range(50_000)]).encode()
    check_depth(wide, 64)  # many brackets, depth 2
    check_depth(b"[" * 64 + b"]" * 64, 64)
    with pytest.raises(TooDeep):
        check_depth(b"[" * 65 + b"]" * 65, 64)
