"""`@timed`: per-stage timings of a handler, recorded when model-config.yaml asks for them.

TorchServe's default handlers wrap `preprocess`, `inference` and `postprocess` with it and emit
`ts_handler_<stage>` (milliseconds) when the model config has `handler: {profile: true}`;
custom handlers import it from `ts.handler_utils.timer`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import torch

P = ParamSpec("P")
R = TypeVar("R")


def profiling_enabled(model_yaml_config: dict[str, Any] | None) -> bool:
    handler_config = (model_yaml_config or {}).get("handler")
    return isinstance(handler_config, dict) and bool(handler_config.get("profile"))


def timed(method: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        context = getattr(args[0], "context", None) if args else None
        if context is None or not profiling_enabled(context.model_yaml_config):
            return method(*args, **kwargs)
        start = time.perf_counter()
        result = method(*args, **kwargs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        elapsed_ms = (time.perf_counter() - start) * 1000
        context.metrics.add_time(f"ts_handler_{method.__name__}", elapsed_ms)
        return result

    return wrapper
