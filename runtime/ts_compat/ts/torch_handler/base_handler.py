"""TorchServe's `ts.torch_handler.base_handler`."""

from marfleet.runtime.handlers.defaults.base_handler import BaseHandler as BaseHandler
