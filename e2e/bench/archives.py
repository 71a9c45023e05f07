"""The benchmark's models, packed by the real torch-model-archiver so both servers load the
very same `.mar`: a tiny TorchScript MLP with a JSON handler (the overhead floor) and
random-weight TorchScript ResNets (18 here, 50 on a GPU) behind the built-in
`image_classifier` handler.
"""

from __future__ import annotations

import io
import subprocess
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from e2e.support import archiver_command

MLP_HANDLER = '''"""JSON rows of 16 numbers in, 4 scores out (the overhead-floor model)."""

import json

import torch
from ts.torch_handler.base_handler import BaseHandler


class TinyMLPHandler(BaseHandler):
    def preprocess(self, data):
        rows = [row.get("data") or row.get("body") for row in data]
        # gRPC inputs reach a handler as bytes (on TorchServe and marfleet alike)
        rows = [json.loads(r) if isinstance(r, (bytes, bytearray)) else r for r in rows]
        return torch.as_tensor(rows, dtype=torch.float32)

    def postprocess(self, data):
        return data.tolist()
'''


class TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _script(model: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(model.eval()).save(str(path))
    return path


def _archive(store: Path, name: str, handler: str, weights: Path) -> Path:
    subprocess.run(
        [
            *archiver_command(),
            "--model-name",
            name,
            "--version",
            "1.0",
            "--handler",
            handler,
            "--serialized-file",
            str(weights),
            "--export-path",
            str(store),
            "--force",
        ],
        check=True,
        capture_output=True,
    )
    return store / f"{name}.mar"


def build_archives(store: Path, work: Path, resnet: bool = True) -> dict[str, Path]:
    """`mlp.mar` and (unless `resnet` is false) `resnet18.mar`; their weights stay in `work`."""
    torch.manual_seed(0)
    handler = work / "tiny_mlp_handler.py"
    handler.write_text(MLP_HANDLER)
    mlp = _archive(store, "mlp", str(handler), _script(TinyMLP(), work / "mlp.pt"))
    if not resnet:
        return {"mlp": mlp}
    return {"mlp": mlp, "resnet18": resnet_archive(store, work, "resnet18")}


def resnet_archive(store: Path, work: Path, arch: str) -> Path:
    """`<arch>.mar`: torchvision's `arch` (random weights, seed 0) as TorchScript behind the
    built-in image_classifier handler."""
    import torchvision  # 5 s to import on a busy 2-core machine: only where a ResNet is built

    torch.manual_seed(0)
    weights = _script(getattr(torchvision.models, arch)(weights=None), work / f"{arch}.pt")
    return _archive(store, arch, "image_classifier", weights)


def mlp_body() -> bytes:
    return b"[" + b", ".join(b"%.3f" % (i / 16) for i in range(16)) + b"]"


def jpeg_body(size: tuple[int, int] = (320, 240)) -> bytes:
    """A photo-sized JPEG of smooth random colour (compresses like a real photo, ~10 kB)."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (size[1] // 16, size[0] // 16, 3), np.uint8)
    picture = Image.fromarray(small, "RGB").resize(size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()
