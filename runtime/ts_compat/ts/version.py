"""TorchServe's `ts.version`."""

from . import __version__ as __version__
