"""`image_segmenter`: an image in, per pixel the most likely class and its probability out.

The model returns torchvision's segmentation dict (`{"out": [N, K, H, W]}`); the answer is
[N, H, W, 2] (class index, probability) rather than every class score, which would be huge.
"""

from __future__ import annotations

from typing import Any

import torch
from marfleet.runtime.handlers.defaults.vision_handler import ImagenetTransform, VisionHandler
from marfleet.runtime.handlers.timer import timed


class ImageSegmenter(VisionHandler):
    image_processing = ImagenetTransform()

    @timed
    def postprocess(self, data: Any) -> list[Any]:
        scores = torch.softmax(data["out"], dim=1)
        best = torch.max(scores, dim=1)
        pairs = torch.stack([best.indices.to(best.values.dtype), best.values], dim=3)
        return pairs.tolist()
