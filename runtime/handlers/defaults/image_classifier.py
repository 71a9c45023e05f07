"""`image_classifier`: an image in, the top-5 {label: probability} out.

Preprocessing is ImageNet's (resize 256, centre crop 224, normalise), as TorchServe's built-in,
so a model trained for it behaves the same; `topk` can be changed by a subclass.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from marfleet.runtime.handlers.defaults.vision_handler import ImagenetTransform, VisionHandler
from marfleet.runtime.handlers.timer import timed
from marfleet.runtime.handlers.util import map_class_to_label


class ImageClassifier(VisionHandler):
    topk = 5
    image_processing = ImagenetTransform()

    def set_max_result_classes(self, topk: int) -> None:
        self.topk = topk

    def get_max_result_classes(self) -> int:
        return self.topk

    @timed
    def postprocess(self, data: torch.Tensor) -> list[dict[str, Any]]:
        probabilities = F.softmax(data, dim=1)
        top = torch.topk(probabilities, min(self.topk, probabilities.shape[1]), dim=1)
        return map_class_to_label(top.values.tolist(), self.mapping, top.indices.tolist())
