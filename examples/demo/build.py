"""Build the demo's model archive: random weights for `model.py`, packed by `marfleet archive`.

    python examples/demo/build.py --out models                 # models/classifier.mar, version 1.0
    python examples/demo/build.py --out models/2.0 --version 2.0 --seed 2
    python examples/demo/build.py --out models --archiver torch-model-archiver   # TorchServe's tool

The weights are random (seeded, so a version always gets the same ones): the point is the
serving, not the answers. The archive is a TorchServe .mar; TorchServe serves it as well.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
MODEL_NAME = "classifier"
CLASSES = ("setosa", "versicolor", "virginica")


ARCHIVERS = {"marfleet": ["archive"], "torch-model-archiver": []}
"""Each archiver's command and the arguments before the ones they share."""


def archiver_command(name: str) -> list[str]:
    """The archiver next to this Python (a virtualenv's), else the one on PATH."""
    sibling = Path(sys.executable).with_name(name)
    found = str(sibling) if sibling.exists() else shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} is not installed here: run `make setup` first")
    return [found, *ARCHIVERS[name]]


def build(out: Path, version: str, seed: int, archiver: str = "marfleet") -> Path:
    """Write `out/classifier.mar` and return its path."""
    sys.path.insert(0, str(HERE))
    from model import Classifier

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="marfleet-demo-build-") as scratch:
        weights = Path(scratch) / "weights.pt"
        torch.manual_seed(seed)
        torch.save(Classifier().state_dict(), weights)
        labels = Path(scratch) / "index_to_name.json"
        labels.write_text(json.dumps({str(i): name for i, name in enumerate(CLASSES)}))
        command = [
            *archiver_command(archiver),
            *("--model-name", MODEL_NAME, "--version", version),
            *("--model-file", str(HERE / "model.py"), "--serialized-file", str(weights)),
            *("--handler", str(HERE / "handler.py"), "--extra-files", str(labels)),
            *("--export-path", str(out), "--force"),
        ]
        print("$ " + shlex.join([archiver, *command[1:]]), flush=True)
        subprocess.run(command, check=True)
    return out / f"{MODEL_NAME}.mar"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for classifier.mar")
    parser.add_argument("--version", default="1.0", help="model version (default 1.0)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random weights")
    parser.add_argument("--archiver", choices=sorted(ARCHIVERS), default="marfleet")
    args = parser.parse_args()
    build(args.out, args.version, args.seed, args.archiver)
    return 0


if __name__ == "__main__":
    sys.exit(main())
