"""TorchServe's `ts.metrics.dimension`."""

from marfleet.runtime.handlers.metrics import Dimension as Dimension
