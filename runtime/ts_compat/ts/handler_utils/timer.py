"""TorchServe's `ts.handler_utils.timer`."""

from marfleet.runtime.handlers.timer import timed as timed
