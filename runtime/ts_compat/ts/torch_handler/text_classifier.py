"""TorchServe's `ts.torch_handler.text_classifier`."""

from marfleet.runtime.handlers.defaults.text_classifier import TextClassifier as TextClassifier
