"""TorchServe's `ts.torch_handler.vision_handler`."""

from marfleet.runtime.handlers.defaults.vision_handler import VisionHandler as VisionHandler
