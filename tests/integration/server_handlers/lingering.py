"""Test handler that leaves a non-daemon thread running, as some libraries' background threads
do: a normal interpreter exit would wait for it forever. Echoes."""

import threading
import time
from typing import Any

threading.Thread(target=time.sleep, args=(3600,), name="lingering", daemon=False).start()


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[Any] | None:
    return None if data is None else [row.get("body") for row in data]
