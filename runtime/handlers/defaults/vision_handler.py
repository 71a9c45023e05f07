"""VisionHandler: images (JPEG/PNG bytes, base64 text, or nested lists) into a batch tensor.

Subclasses set `image_processing` (a torchvision transform from a PIL image to a tensor); rows
that already are nested lists become float tensors untouched. Images reach the transform in
the mode they were stored in, exactly as in TorchServe: a handler with a 1-channel transform
(TorchServe's MNIST example) gets its grayscale image, and the stock 3-channel transform fails
on a grayscale, palette or RGBA image as TorchServe's does. An unreadable image fails the batch
with 400 (decoded here, so a truncated file is told apart from a handler error).
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any, ClassVar, Protocol

import torch
from marfleet.runtime.handlers.context import Context
from marfleet.runtime.handlers.defaults.base_handler import BaseHandler
from marfleet.runtime.handlers.defaults.insights import integrated_gradients
from marfleet.runtime.handlers.errors import PredictionException
from marfleet.runtime.handlers.timer import timed
from PIL import Image
from torchvision import transforms

BAD_INPUT = 400
EXPLAIN_STEPS = 15
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class ImageTransform(Protocol):
    """A torchvision transform from a PIL image to a tensor."""

    def __call__(self, image: Image.Image) -> torch.Tensor: ...


def imagenet_transform() -> ImageTransform:
    """Resize 256, centre crop 224, normalise with ImageNet statistics (TorchServe's choice)."""
    return transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ]
    )


def pixel_limit(setting: bool | int | None) -> int | None:
    """PIL's MAX_IMAGE_PIXELS for `limit_max_image_pixels`: True keeps PIL's default."""
    if setting is True:
        return Image.MAX_IMAGE_PIXELS
    if not setting:
        return None
    return int(setting)


def open_image(payload: bytes, row: int) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(payload))
        image.load()
        return image
    except Image.DecompressionBombError:
        raise PredictionException(
            f"request {row}: the image has more pixels than limit_max_image_pixels allows",
            BAD_INPUT,
        ) from None
    except (OSError, SyntaxError, ValueError):
        raise PredictionException(
            f"request {row}: the input is not an image format PIL can read (JPEG, PNG, ...)",
            BAD_INPUT,
        ) from None


class VisionHandler(BaseHandler):
    """Shared preprocessing of the image handlers."""

    image_processing: ClassVar[ImageTransform]

    def initialize(self, context: Context) -> None:
        super().initialize(context)
        Image.MAX_IMAGE_PIXELS = pixel_limit(
            context.system_properties.get("limit_max_image_pixels")
        )

    @timed
    def preprocess(self, data: list[Any]) -> torch.Tensor:
        images = []
        for index, row in enumerate(data):
            image = row.get("data") or row.get("body")
            if isinstance(image, str):
                try:
                    image = base64.b64decode(image)
                except binascii.Error:
                    raise PredictionException(
                        f"request {index}: text input must be a base64-encoded image", BAD_INPUT
                    ) from None
            if isinstance(image, (bytes, bytearray)):
                images.append(self.image_processing(open_image(bytes(image), index)))
            else:
                images.append(torch.FloatTensor(image))
        return torch.stack(images).to(self.device)

    def get_insights(self, tensor_data: Any, raw_input: Any, target: Any = 0) -> Any:
        return integrated_gradients(self.model, tensor_data, target, EXPLAIN_STEPS).tolist()
