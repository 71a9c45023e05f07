"""TorchServe's `ts.torch_handler.text_handler`."""

from marfleet.runtime.handlers.defaults.text_handler import TextHandler as TextHandler
