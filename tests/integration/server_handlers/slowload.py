"""Test handler that takes a few seconds to load, then echoes."""

import time
from typing import Any

time.sleep(4)


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[Any] | None:
    return None if data is None else [row.get("body") for row in data]
