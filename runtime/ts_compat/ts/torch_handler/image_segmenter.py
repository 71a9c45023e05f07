"""TorchServe's `ts.torch_handler.image_segmenter`."""

from marfleet.runtime.handlers.defaults.image_segmenter import ImageSegmenter as ImageSegmenter
