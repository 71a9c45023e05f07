"""The demo's model file (`marfleet archive --model-file`): 4 measurements in, 3 class scores out.

A model file holds exactly one nn.Module class with a constructor that takes no arguments, as
TorchServe requires; its weights travel separately as a state dict (`--serialized-file`).
"""

import torch
from torch import nn


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
