"""VisionHandler: images (JPEG/PNG bytes, base64 text, or nested lists) into a batch tensor.

Subclasses set `image_processing` (a torchvision transform from a PIL image to a tensor); rows
that already are nested lists become float tensors untouched. Images reach the transform in
the mode they were stored in, exactly as in TorchServe: a handler with a 1-channel transform
(TorchServe's MNIST example) gets its grayscale image, and the stock 3-channel transform fails
on a grayscale, palette or RGBA image as TorchServe's does. An unreadable image fails the batch
with 400 (decoded here, so a truncated file is told apart from a handler error).

With the default ImageNet transform (`ImagenetTransform`, what `image_classifier` uses) a batch
of encoded images takes a faster road to the same tensor, because on a GPU worker the CPU work
before the forward pass is what limits throughput: the images are decoded, resized and cropped
on up to `torch.get_num_threads()` threads (PIL releases the GIL while it works), assembled as
one uint8 batch (in pinned memory when the model is on a GPU, so the copy is asynchronous and
a quarter of float32's bytes), and scaled and normalised in one batched operation on the
model's device. The arithmetic is ToTensor's and Normalize's (divide by 255, subtract the mean,
divide by the standard deviation, each correctly rounded), so the tensor is the same bit for
bit. Any other transform, a batch with an image that is not RGB, or rows that are not encoded
images go through `image_processing` one image at a time as in TorchServe.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, Protocol, TypeVar

import numpy as np
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


class ImagenetTransform(transforms.Compose):
    """`imagenet_transform()` that can also run split: PIL geometry per image, then the
    scaling and normalisation on a whole uint8 batch (on any device) with the same result."""

    def __init__(self) -> None:
        super().__init__(list(imagenet_transform().transforms))  # type: ignore[attr-defined]
        self._statistics: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def geometry(self, image: Image.Image) -> np.ndarray:
        """Resize and centre crop: a 224 x 224 x 3 uint8 array."""
        resize, crop = self.transforms[0], self.transforms[1]
        return np.array(crop(resize(image)), dtype=np.uint8)

    def normalise(self, batch: torch.Tensor) -> torch.Tensor:
        """N x H x W x 3 uint8 (on any device) -> N x 3 x H x W float32, as ToTensor+Normalize."""
        scaled = batch.permute(0, 3, 1, 2).to(torch.float32).div(255)
        statistics = self._statistics.get(batch.device)
        if statistics is None:
            mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
            statistics = self._statistics[batch.device] = (
                mean.to(batch.device),
                std.to(batch.device),
            )
        mean, std = statistics
        normalised = scaled.sub_(mean).div_(std)  # channels-last strides, from the permute
        if batch.shape[0] == 1 and batch.device.type == "cpu":
            # a lone image in channels-last layout costs a CPU ResNet-18 half as much again per
            # image as a contiguous one (75 vs 49 ms, one thread); at batch 8 channels-last is
            # the faster (41 vs 46 ms), so only the single image is made contiguous
            return normalised.contiguous()
        return normalised


Item = TypeVar("Item")
Result = TypeVar("Result")
_pools: dict[int, ThreadPoolExecutor] = {}


def map_on_threads(
    work: Callable[[Item], Result], items: Sequence[Item], threads: int
) -> list[Result]:
    """`work` over `items` in order on up to `threads` threads (inline for one); the first
    failing item's exception is raised, as a plain loop would."""
    if min(threads, len(items)) <= 1:
        return [work(item) for item in items]
    pool = _pools.get(threads)
    if pool is None:
        pool = _pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix="image-decode")
    return list(pool.map(work, items))


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


def payload(row: Any, index: int) -> Any:
    """A row's image: bytes (base64 text decoded), or whatever else it holds (nested lists)."""
    image = row.get("data") or row.get("body")
    if isinstance(image, str):
        try:
            return base64.b64decode(image)
        except binascii.Error:
            raise PredictionException(
                f"request {index}: text input must be a base64-encoded image", BAD_INPUT
            ) from None
    return bytes(image) if isinstance(image, bytearray) else image


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
        payloads = [payload(row, index) for index, row in enumerate(data)]
        transform = self.image_processing
        if isinstance(transform, ImagenetTransform) and all(isinstance(p, bytes) for p in payloads):
            return self._imagenet_batch(transform, payloads)
        images = []
        for index, image in enumerate(payloads):
            if isinstance(image, bytes):
                images.append(transform(open_image(image, index)))
            else:
                images.append(torch.FloatTensor(image))
        return torch.stack(images).to(self.device)

    def _imagenet_batch(self, transform: ImagenetTransform, images: list[bytes]) -> torch.Tensor:
        device = self.device or torch.device("cpu")
        pinned = device.type == "cuda"

        def decode(item: tuple[int, bytes]) -> tuple[Image.Image, np.ndarray | None]:
            index, encoded = item
            image = open_image(encoded, index)
            return image, transform.geometry(image) if image.mode == "RGB" else None

        decoded = map_on_threads(decode, list(enumerate(images)), torch.get_num_threads())
        arrays = [array for _, array in decoded if array is not None]
        if len(arrays) < len(decoded):  # stored in another mode: the transform as TorchServe's
            return torch.stack([transform(image) for image, _ in decoded]).to(self.device)
        batch = torch.empty((len(arrays), *arrays[0].shape), dtype=torch.uint8, pin_memory=pinned)
        for slot, array in zip(batch, arrays, strict=True):
            slot.copy_(torch.from_numpy(array))
        return transform.normalise(batch.to(device, non_blocking=pinned))

    def get_insights(self, tensor_data: Any, raw_input: Any, target: Any = 0) -> Any:
        return integrated_gradients(self.model, tensor_data, target, EXPLAIN_STEPS).tolist()
