"""Finding a model's handler the way TorchServe's worker does.

The manifest's `handler` is `module`, `module.py`, `path/module[.py]` or `module:function`. The
module is imported with the model directory first on `sys.path`; a name that is not a module
there but is a built-in (`image_classifier`, ...) gets marfleet's built-in. Then, as TorchServe:
if the module has the function (`handle` by default) that is the entry point and it is
initialised as `function(None, context)`; otherwise the module must define exactly one class
(imported classes do not count), which is instantiated and its `initialize(context)` and
`handle(data, context)` are used.

A worker loads one model, but tests and tools load several in one process, so entering a model
directory also forgets the modules imported from the previously entered one: `handler` of one
model is never served to another.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from marfleet.runtime.handlers.context import Context
from marfleet.runtime.handlers.errors import ModelLoadError
from marfleet.runtime.handlers.util import list_classes_from_module

# Built-in handler name -> the module that defines its one handler class.
BUILTIN_HANDLERS = {
    "base_handler": "marfleet.runtime.handlers.defaults.base_handler",
    "image_classifier": "marfleet.runtime.handlers.defaults.image_classifier",
    "image_segmenter": "marfleet.runtime.handlers.defaults.image_segmenter",
    "object_detector": "marfleet.runtime.handlers.defaults.object_detector",
    "text_classifier": "marfleet.runtime.handlers.defaults.text_classifier",
}
DEFAULT_FUNCTION = "handle"

HandleFn = Callable[[Any, Context], Any]

# Model directories this process has put on sys.path, most recent last.
_entered_model_dirs: list[str] = []


@dataclass(frozen=True)
class EntryPoint:
    """How to call a loaded handler: `initialize(context)` once, then `handle(rows, context)`."""

    handle: HandleFn
    initialize: Callable[[Context], Any]
    description: str


def split_handler(handler: str) -> tuple[str, str | None]:
    """`dir/mod.py:fn` -> (`mod`, `fn`); `mod` -> (`mod`, None)."""
    module, _, function = handler.partition(":")
    module = module.removesuffix(".py").split("/")[-1]
    return module, function or None


def enter_model_dir(model_dir: Path) -> None:
    """Put `model_dir` first on sys.path and forget modules imported from other model dirs."""
    current = str(model_dir.resolve())
    stale = [entry for entry in _entered_model_dirs if entry != current]
    for name, module in list(sys.modules.items()):
        origin = getattr(module, "__file__", None)
        if origin and any(origin.startswith(entry + "/") for entry in stale):
            del sys.modules[name]
    for entry in [*stale, current]:
        while entry in sys.path:
            sys.path.remove(entry)
    sys.path.insert(0, current)
    importlib.invalidate_caches()
    _entered_model_dirs[:] = [current]


def load_entry_point(handler: str) -> EntryPoint:
    """Import `handler` (model directory already entered) and return its entry point."""
    module_name, function_name = split_handler(handler)
    if not module_name:
        raise ModelLoadError(f"handler {handler!r} names no module")
    module = _import_handler_module(module_name, handler)
    if function_name is not None or hasattr(module, DEFAULT_FUNCTION):
        return _function_entry_point(module, function_name or DEFAULT_FUNCTION, handler)
    return _class_entry_point(module, handler)


def _import_handler_module(module_name: str, handler: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise ModelLoadError(
                f"handler module {module_name!r} imports {error.name!r}, which is not installed "
                "(add it to the image or the archive's requirements file)"
            ) from error
    if module_name in BUILTIN_HANDLERS:
        return importlib.import_module(BUILTIN_HANDLERS[module_name])
    raise ModelLoadError(
        f"handler {handler!r}: no module {module_name!r} in the model directory and no built-in "
        f"handler of that name (built-ins: {', '.join(sorted(BUILTIN_HANDLERS))})"
    )


def _function_entry_point(module: ModuleType, function_name: str, handler: str) -> EntryPoint:
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ModelLoadError(f"handler {handler!r}: module has no function {function_name!r}")

    def initialize(context: Context) -> Any:
        return function(None, context)

    return EntryPoint(function, initialize, f"{module.__name__}:{function_name}")


def _class_entry_point(module: ModuleType, handler: str) -> EntryPoint:
    classes = list_classes_from_module(module)
    if len(classes) != 1:
        found = ", ".join(cls.__name__ for cls in classes) or "none"
        raise ModelLoadError(
            f"handler {handler!r}: module {module.__name__!r} must define exactly one class or a "
            f"function `{DEFAULT_FUNCTION}(data, context)`; it defines these classes: {found} "
            "(name the function as module:function, or keep one class in the module)"
        )
    instance = classes[0]()
    for method in ("initialize", "handle"):
        if not callable(getattr(instance, method, None)):
            raise ModelLoadError(
                f"handler class {classes[0].__name__} has no {method}() method "
                "(subclass ts.torch_handler.base_handler.BaseHandler or define it)"
            )
    return EntryPoint(
        instance.handle, instance.initialize, f"{module.__name__}.{classes[0].__name__}"
    )
