"""Test handler whose behaviour follows its archive's version, as a canary's would: a version
with "bad" in its name fails every third request (the runtime answers 500), others answer
with the version."""

from typing import Any

_seen = [0]


def handle(data: list[Any] | None, context: Any) -> list[dict[str, str]] | None:
    if data is None:
        return None
    version = str(context.manifest["model"]["modelVersion"])
    _seen[0] += 1
    if "bad" in version and _seen[0] % 3 == 0:
        raise RuntimeError(f"version {version} fails this request on purpose")
    return [{"version": version} for _ in data]
