"""TorchServe's `ts.torch_handler.object_detector`."""

from marfleet.runtime.handlers.defaults.object_detector import ObjectDetector as ObjectDetector
