"""The `ts` package for handlers written against TorchServe, when TorchServe is not installed.

This folder is a `sys.path` entry: `install()` appends it when `import ts` would otherwise fail,
and then `ts.torch_handler.base_handler`, `ts.context`, `ts.utils.util`, ... resolve to thin
modules that re-export marfleet's own classes. Re-exporting (rather than copying) keeps one
class per concept, so `isinstance(handler, ts.torch_handler.base_handler.BaseHandler)` and the
runtime's own checks agree. An installed TorchServe is never shadowed.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SHIM_ROOT = str(Path(__file__).resolve().parent)


def install() -> bool:
    """Make `import ts` work; returns True when the shim was put on sys.path for it."""
    if SHIM_ROOT in sys.path:
        return True
    if importlib.util.find_spec("ts") is not None:
        return False
    sys.path.append(SHIM_ROOT)
    importlib.invalidate_caches()
    return True
