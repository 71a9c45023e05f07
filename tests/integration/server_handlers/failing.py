"""Test handler whose initialisation always fails, as a model with a missing dependency does."""

from typing import Any


class FailingHandler:
    def initialize(self, context: Any) -> None:
        raise RuntimeError("this model cannot load: its weights are missing")

    def handle(self, data: Any, context: Any) -> Any:
        return data
