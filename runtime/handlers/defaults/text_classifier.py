"""`text_classifier`: text in, {label: probability} over all classes out.

The model is TorchServe's text-classification shape: `model(token_ids, offsets)` with an
EmbeddingBag over the concatenated token ids of the batch (unigrams and bigrams), returning
[batch, classes] scores. Unlike TorchServe's built-in, which only reads the first request,
every request of a batch is classified.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from marfleet.runtime.handlers.defaults.text_handler import TextHandler, normalise_text, with_ngrams
from marfleet.runtime.handlers.timer import timed
from marfleet.runtime.handlers.util import map_class_to_label


class TextClassifier(TextHandler):
    ngrams = 2

    @timed
    def preprocess(self, data: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        ids: list[int] = []
        offsets: list[int] = []
        for row in data:
            offsets.append(len(ids))
            ids += self.token_ids(with_ngrams(normalise_text(self.row_text(row)), self.ngrams))
        return (
            torch.as_tensor(ids, dtype=torch.long, device=self.device),
            torch.as_tensor(offsets, dtype=torch.long, device=self.device),
        )

    def inference(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        token_ids, offsets = data
        return super().inference(token_ids, offsets)

    @timed
    def postprocess(self, data: torch.Tensor) -> list[dict[str, Any]]:
        return map_class_to_label(F.softmax(data, dim=1).tolist(), self.mapping)
