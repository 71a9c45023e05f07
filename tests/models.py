"""Tiny random-weight models and the files a model archive is made of, built inside tests.

Every model is small enough to run in milliseconds on one CPU thread and takes its weights from
a fixed seed, so TorchServe's worker and marfleet computing on the same archive agree. Eager
models are written as a model file holding only the class source (one class, no-argument
constructor: TorchServe's rule) plus a state dict; TorchScript models as a scripted `.pt`.
"""

from __future__ import annotations

import inspect
import io
import json
import warnings
from pathlib import Path

import numpy
import torch
from PIL import Image
from torch import nn

MODEL_FILE_HEADER = "import torch\nfrom torch import nn\n\n\n"


class TinyMLP(nn.Module):
    """4 features in, 3 scores out."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class TinyImageClassifier(nn.Module):
    """A 3x224x224 image in, 10 class scores out."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, kernel_size=16, stride=16), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
        )
        self.classifier = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class TinyDigitClassifier(nn.Module):
    """TorchServe's MNIST shape: a 1x28x28 grayscale image in, 10 digit scores out."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, kernel_size=7, stride=7)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


class TinySegmenter(nn.Module):
    """torchvision's segmentation output shape: {"out": [N, 3 classes, H/8, W/8]}."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, 3, kernel_size=8, stride=8)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.head(x)}


class TinyDetector(nn.Module):
    """torchvision's detection output shape: per image {"boxes", "labels", "scores"} for 4 boxes."""

    def __init__(self) -> None:
        super().__init__()
        self.score = nn.Linear(3, 4)

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        results = []
        for image in images:
            scores = torch.sigmoid(self.score(image.mean(dim=(1, 2))))
            boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0]]).repeat(4, 1) * torch.arange(1, 5)[:, None]
            results.append({"boxes": boxes, "labels": torch.arange(4), "scores": scores})
        return results


class TinyTextClassifier(nn.Module):
    """TorchServe's text-classifier shape: model(token_ids, offsets) -> [batch, 2 scores]."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.EmbeddingBag(32, 8)
        self.fc = nn.Linear(8, 2)

    def forward(self, text: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embedding(text, offsets))


def build(model_class: type[nn.Module], seed: int = 0) -> nn.Module:
    """The model with the weights every archive of `seed` carries, frozen for comparisons."""
    torch.manual_seed(seed)
    return model_class().eval().requires_grad_(False)


def write_torchscript(
    directory: Path, model_class: type[nn.Module] = TinyMLP, seed: int = 0, name: str = "model.pt"
) -> Path:
    """A scripted model saved as `directory/name` (TorchScript: no model file needed)."""
    path = directory / name
    with warnings.catch_warnings():
        # torch.jit is deprecated for new work, but TorchScript is what MAR archives carry.
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(build(model_class, seed)).save(str(path))
    return path


def write_eager(
    directory: Path, model_class: type[nn.Module], seed: int = 0, stem: str = "model"
) -> tuple[Path, Path]:
    """(model file, state dict) for `--model-file` and `--serialized-file`."""
    model_file = directory / f"{stem}.py"
    model_file.write_text(MODEL_FILE_HEADER + inspect.getsource(model_class))
    weights = directory / f"{stem}.pth"
    torch.save(build(model_class, seed).state_dict(), weights)
    return model_file, weights


def write_index_to_name(directory: Path, count: int) -> Path:
    path = directory / "index_to_name.json"
    path.write_text(json.dumps({str(index): f"class_{index}" for index in range(count)}))
    return path


def write_vocab(directory: Path, words: list[str]) -> Path:
    """source_vocab.pt for the text classifier: {token: index}, `<unk>` first."""
    path = directory / "source_vocab.pt"
    torch.save({token: index for index, token in enumerate(["<unk>", *words])}, path)
    return path


def image_bytes(
    image_format: str = "PNG", size: tuple[int, int] = (64, 48), seed: int = 0, mode: str = "RGB"
) -> bytes:
    """A random RGB picture encoded as PNG or JPEG, stored in `mode` ("L": grayscale)."""
    pixels = numpy.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), numpy.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").convert(mode).save(buffer, format=image_format)
    return buffer.getvalue()


def write_model_dir(
    directory: Path,
    handler: str,
    *,
    files: dict[str, str] | None = None,
    model: dict[str, str] | None = None,
) -> Path:
    """An unpacked archive: `files` (name -> text) plus a MANIFEST.json naming `handler`.

    `model` adds manifest fields such as {"serializedFile": "model.pt"}.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in (files or {}).items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text)
    manifest = {
        "runtime": "python",
        "model": {
            "modelName": directory.name,
            "handler": handler,
            "modelVersion": "1.0",
            **(model or {}),
        },
    }
    (directory / "MAR-INF").mkdir(exist_ok=True)
    (directory / "MAR-INF/MANIFEST.json").write_text(json.dumps(manifest))
    return directory
