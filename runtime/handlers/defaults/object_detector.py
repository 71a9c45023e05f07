"""`object_detector`: an image in, the boxes scoring at least `threshold` out.

The model is a torchvision-style detector returning one {"boxes", "labels", "scores"} dict per
image; each detection is answered as `{label: [x1, y1, x2, y2], "score": s}` with the label
from index_to_name.json.
"""

from __future__ import annotations

from typing import Any

from marfleet.runtime.handlers.defaults.vision_handler import VisionHandler
from marfleet.runtime.handlers.timer import timed
from marfleet.runtime.handlers.util import map_class_to_label
from torchvision import transforms


class ObjectDetector(VisionHandler):
    image_processing = transforms.Compose([transforms.ToTensor()])
    threshold = 0.5

    @timed
    def postprocess(self, data: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        results = []
        for detections in data:
            keep = detections["scores"] >= self.threshold
            boxes = detections["boxes"][keep].tolist()
            labels = detections["labels"][keep].tolist()
            scores = detections["scores"][keep].tolist()
            image_results = []
            for label, box, score in zip(labels, boxes, scores, strict=True):
                entry = map_class_to_label([[box]], self.mapping, [[label]])[0]
                entry["score"] = score
                image_results.append(entry)
            results.append(image_results)
        return results
