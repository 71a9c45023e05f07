"""Handlers written against TorchServe's `ts` package, run where TorchServe is not installed.

The archives come from the real torch-model-archiver. Each is served twice: in this process,
where TorchServe's own `ts` is installed and must not be shadowed, and in a Python that cannot
see TorchServe, where marfleet's compatibility package must stand in; the answers must agree.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from marfleet.runtime import ts_compat
from marfleet.runtime.archive.reader import load_archive

from tests.handler_sources import (
    FUNCTION_HANDLER,
    MLP_HANDLER,
    MNIST_HANDLER,
    PROBE_HANDLER,
    TOP_TWO_HANDLER,
    write_handler,
)
from tests.marfleet_runner import Call, run_without_torchserve, same_json, serve_batches
from tests.models import (
    TinyDigitClassifier,
    TinyImageClassifier,
    image_bytes,
    write_eager,
    write_index_to_name,
    write_torchscript,
)
from tests.torchserve_tools import torch_model_archiver

torch.set_num_threads(1)
# TorchServe's BaseHandler loads TorchScript, which torch now warns is deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")

JSON = "application/json"
V2_PAIR = json.dumps(
    {
        "id": "v2",
        "inputs": [
            {"name": "a", "shape": [2], "datatype": "INT64", "data": [1, 2]},
            {"name": "b", "shape": [1], "datatype": "BYTES", "data": ["x"]},
        ],
    }
).encode()
Batch = tuple[str, list[Call], bool]
BATCHES: list[Batch] = [
    ("mlp", [Call(b"[1, 2, 3, 4]", JSON), Call(b"[0, 1, 0, 1]", JSON)], False),
    ("mlp", [Call(b'{"x": 1}', JSON)], False),
    ("top2", [Call(image_bytes(seed=5), "image/png")], False),
    ("fn", [Call(b"[1, 2, 3, 4]", JSON)], False),
    ("fn", [Call(b"words", "text/plain")], False),
    (
        "mnist",
        [Call(image_bytes(size=(28, 28), seed=s, mode="L"), "image/png") for s in (6, 7)],
        False,
    ),
    ("probe", [Call(V2_PAIR, JSON)], False),
    ("probe", [Call(V2_PAIR, JSON)], True),
]
ENVELOPES = {"probe": "kservev2"}  # TorchServe's service_envelope=kservev2
MODEL = {"ModelName": "probe", "Level": "Model"}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("shim")
    write_torchscript(folder)
    write_eager(folder, TinyImageClassifier, stem="classifier")
    write_index_to_name(folder, 10)
    mlp = write_handler(folder, "mlp_handler", MLP_HANDLER)
    top2 = write_handler(folder, "top_two", TOP_TWO_HANDLER)
    fn = write_handler(folder, "fn_handler", FUNCTION_HANDLER)
    mnist = write_handler(folder, "mnist_handler", MNIST_HANDLER)
    probe = write_handler(folder, "probe_handler", PROBE_HANDLER)
    write_eager(folder, TinyDigitClassifier, stem="digits")
    torchscript: list[str | Path] = ["--serialized-file", folder / "model.pt"]
    eager: list[str | Path] = ["--model-file", folder / "classifier.py"]
    eager += ["--serialized-file", folder / "classifier.pth"]
    digits: list[str | Path] = ["--model-file", folder / "digits.py"]
    digits += ["--serialized-file", folder / "digits.pth"]
    flags: dict[str, list[str | Path]] = {
        "mlp": [*torchscript, "--handler", mlp],
        "top2": [*eager, "--handler", top2, "--extra-files", folder / "index_to_name.json"],
        "fn": [*torchscript, "--handler", f"{fn.with_suffix('')}:infer"],
        "mnist": [*digits, "--handler", mnist],
        "probe": ["--handler", f"{probe.with_suffix('')}:handle"],
    }
    dirs = {}
    for name, extra in flags.items():
        torch_model_archiver("--model-name", name, "-v", "1.0", "--export-path", folder, *extra)
        dirs[name] = load_archive(folder / f"{name}.mar", folder / name).model_dir
    return dirs


def untimed(records: list[list[Any]]) -> list[list[Any]]:
    """Metric records without the values of timings (HandlerTime, ...), which vary run to run."""
    return [
        [n, None if n.endswith("Time") and n != "ProbeTime" else v, *rest]
        for n, v, *rest in records
    ]


def test_an_installed_torchserve_is_not_shadowed() -> None:
    assert importlib.util.find_spec("ts") is not None
    assert ts_compat.install() is False
    import ts

    assert "site-packages" in str(ts.__file__)


def test_handlers_run_the_same_without_torchserve(
    model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    facts, shimmed = run_without_torchserve(tmp_path, model_dirs, BATCHES, ENVELOPES)
    assert facts["ts_installed_before"] is False
    assert Path(facts["ts_file"]).parent.parent == Path(ts_compat.SHIM_ROOT)
    native, metrics = serve_batches(model_dirs, BATCHES, ENVELOPES)
    statuses = [[answer.status for answer in batch] for batch in shimmed]
    assert statuses == [[200, 200], [400], [200], [200], [422], [200, 200], [200], [200]]
    # the probe's metrics, recorded through `ts.metrics` classes of either package, agree
    assert untimed(json.loads(json.dumps(metrics))) == untimed(facts["metrics"])
    probe = [record for record in metrics if record[0] == "ProbeRows"]
    assert probe == [["ProbeRows", 2.0, "count", {"Kind": "rows", **MODEL}, "counter"]] * 2
    for ours, theirs in zip(shimmed, native, strict=True):
        for mine, reference in zip(ours, theirs, strict=True):
            assert (mine.status, mine.content_type, mine.headers) == (
                reference.status,
                reference.content_type,
                reference.headers,
            )
            assert same_json(mine.json(), reference.json()), (mine.body, reference.body)
