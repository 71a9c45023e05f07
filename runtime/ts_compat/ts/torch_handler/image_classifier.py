"""TorchServe's `ts.torch_handler.image_classifier`."""

from marfleet.runtime.handlers.defaults.image_classifier import ImageClassifier as ImageClassifier
