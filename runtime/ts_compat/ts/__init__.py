"""marfleet's stand-in for TorchServe's `ts` package (see marfleet.runtime.ts_compat)."""

# The TorchServe release whose handler API this package provides.
__version__ = "0.12.0"
