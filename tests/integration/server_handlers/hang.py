"""Test handler whose import never finishes, as a model stuck in initialize() does."""

import time

time.sleep(3600)


def handle(data, context):  # type: ignore[no-untyped-def]
    return data
