"""Build TorchServe's MNIST example as a model archive, with TorchServe's `torch-model-archiver`,
and a digit to send it.

    python examples/mnist/build.py --out models    # models/mnist.mar and models/digit.png
    curl -T models/digit.png http://<server>/predictions/mnist    # -> [<digit>]

`mnist.py` and `mnist_handler.py` are the network and handler of TorchServe's example; the
weights are random (seeded, so a seed always gives the same archive and answers): the point is
that marfleet answers exactly what TorchServe answers for the same archive and picture.
`digit.png` is a 28x28 8-bit grayscale PNG of a drawn 7, white on black as in MNIST.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
MODEL_NAME = "mnist"


def draw_digit(path: Path) -> Path:
    """A hand-drawn-looking 7 on a 28x28 black grayscale ("L") canvas, saved as PNG."""
    image = Image.new("L", (28, 28))
    ImageDraw.Draw(image).line([(6, 6), (21, 6), (12, 23)], fill=255, width=3)
    image.save(path, format="PNG")
    return path


def build(out: Path, seed: int = 1, version: str = "1.0") -> Path:
    """Write `out/mnist.mar` and `out/digit.png`; the archive's path."""
    sys.path.insert(0, str(HERE))
    from mnist import Net

    archiver = Path(sys.executable).with_name("torch-model-archiver")
    command = str(archiver) if archiver.exists() else shutil.which(archiver.name)
    if command is None:
        raise SystemExit("torch-model-archiver is not installed here: run `make setup` first")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="marfleet-mnist-build-") as scratch:
        weights = Path(scratch) / "mnist_cnn.pt"
        torch.manual_seed(seed)
        torch.save(Net().state_dict(), weights)
        subprocess.run(
            [
                command,
                *("--model-name", MODEL_NAME, "--version", version),
                *("--model-file", str(HERE / "mnist.py"), "--serialized-file", str(weights)),
                *("--handler", str(HERE / "mnist_handler.py")),
                *("--export-path", str(out), "--force"),
            ],
            check=True,
        )
    draw_digit(out / "digit.png")
    return out / f"{MODEL_NAME}.mar"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for mnist.mar")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random weights")
    parser.add_argument("--version", default="1.0", help="model version (default 1.0)")
    args = parser.parse_args()
    build(args.out, args.seed, args.version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
