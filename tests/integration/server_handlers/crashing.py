"""Test handler whose initialisation crashes the interpreter, as a broken native extension
does: the worker dies by SIGSEGV instead of raising."""

import os
import signal
from typing import Any


class CrashingHandler:
    def initialize(self, context: Any) -> None:
        os.kill(os.getpid(), signal.SIGSEGV)

    def handle(self, data: Any, context: Any) -> Any:
        return data
