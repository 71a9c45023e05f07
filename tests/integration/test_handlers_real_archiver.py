"""Archives made by the real torch-model-archiver 0.12, loaded and served by marfleet.

Here TorchServe's own `ts` package is installed, so handlers that import it get TorchServe's
base classes running on marfleet's Context and batch contract; test_handlers_ts_shim runs the
same archives without TorchServe. `marfleet archive` must write what the archiver writes.
"""

from __future__ import annotations

import json
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from marfleet.runtime.archive.cli import main as marfleet_archive
from marfleet.runtime.archive.reader import ModelArchive, load_archive
from marfleet.runtime.handlers.metrics import HandlerMetric
from marfleet.runtime.handlers.service import InferenceRequest, ModelService

from tests.handler_sources import FUNCTION_HANDLER, MLP_HANDLER, TOP_TWO_HANDLER, write_handler
from tests.models import (
    TinyImageClassifier,
    TinyMLP,
    build,
    image_bytes,
    write_eager,
    write_index_to_name,
    write_torchscript,
)
from tests.torchserve_tools import torch_model_archiver

torch.set_num_threads(1)
# TorchServe's BaseHandler loads TorchScript, which torch now warns is deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")

ROWS = [[1.0, -2.0, 0.5, 3.0], [0.0, 1.0, 1.0, -1.0]]


def json_request(value: Any, request_id: str = "r") -> InferenceRequest:
    return InferenceRequest(request_id, json.dumps(value).encode(), "application/json", {}, {})


def png_request(seed: int) -> InferenceRequest:
    return InferenceRequest(f"img{seed}", image_bytes(seed=seed), "image/png", {}, {})


def serve(archive: ModelArchive, sink: list[HandlerMetric] | None = None) -> ModelService:
    return ModelService.load(
        archive.model_dir,
        gpu_id=None,
        batch_size=2,
        metrics_sink=sink.extend if sink is not None else None,
    )


def answers(service: ModelService, batch: list[InferenceRequest]) -> list[Any]:
    results = service.handle(batch)
    assert [r.status for r in results] == [200] * len(batch), [r.body for r in results]
    return [json.loads(r.body) for r in results]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Model files for every archive of this module, made once."""
    folder = tmp_path_factory.mktemp("inputs")
    write_torchscript(folder, TinyMLP)
    write_eager(folder, TinyImageClassifier, stem="classifier")
    write_index_to_name(folder, 10)
    write_handler(folder, "mlp_handler", MLP_HANDLER)
    write_handler(folder, "top_two", TOP_TWO_HANDLER)
    write_handler(folder, "fn_handler", FUNCTION_HANDLER)
    return folder


def test_torchscript_model_with_a_custom_handler_class(inputs: Path, tmp_path: Path) -> None:
    torch_model_archiver(
        "--model-name", "mlp", "-v", "1.0", "--serialized-file", inputs / "model.pt",
        "--handler", inputs / "mlp_handler.py", "--export-path", tmp_path,
    )  # fmt: skip
    archive = load_archive(tmp_path / "mlp.mar", tmp_path / "mlp")
    sink: list[HandlerMetric] = []
    service = serve(archive, sink)
    first, second = answers(service, [json_request(ROWS[0], "a"), json_request(ROWS[1], "b")])
    expected = build(TinyMLP)(torch.tensor(ROWS))
    torch.testing.assert_close(torch.tensor([first["scores"], second["scores"]]), expected)
    assert [first["best"], second["best"]] == expected.argmax(1).tolist()
    assert {m.name for m in sink} >= {"MLPRows", "HandlerTime", "PredictionTime"}
    (refused,) = service.handle([json_request({"not": "a list"})])
    assert refused.status == 400
    assert json.loads(refused.body)["message"] == "each request must be a JSON list of 4 numbers"


def test_eager_model_with_builtin_image_classifier_and_labels(inputs: Path, tmp_path: Path) -> None:
    torch_model_archiver(
        "--model-name", "classifier", "-v", "2.0", "--model-file", inputs / "classifier.py",
        "--serialized-file", inputs / "classifier.pth", "--handler", "image_classifier",
        "--extra-files", inputs / "index_to_name.json", "--export-path", tmp_path,
    )  # fmt: skip
    archive = load_archive(tmp_path / "classifier.mar", tmp_path / "classifier")
    assert archive.manifest.model_version == "2.0"
    service = serve(archive)
    outputs = answers(service, [png_request(1), png_request(2)])
    for output in outputs:
        assert len(output) == 5
        assert all(label.startswith("class_") for label in output)
        assert sum(output.values()) <= 1.0 + 1e-6


def test_module_function_handler(inputs: Path, tmp_path: Path) -> None:
    torch_model_archiver(
        "--model-name", "fn", "-v", "1.0", "--serialized-file", inputs / "model.pt",
        "--handler", f"{inputs / 'fn_handler'}:infer", "--export-path", tmp_path,
    )  # fmt: skip
    archive = load_archive(tmp_path / "fn.mar", tmp_path / "fn")
    assert archive.manifest.handler == "fn_handler:infer"
    service = serve(archive)
    results = service.handle([json_request(ROWS[0])])
    expected = float(build(TinyMLP)(torch.tensor([ROWS[0]])).sum())
    assert json.loads(results[0].body) == {"sum": pytest.approx(expected)}
    assert results[0].headers == {"X-Model": "fn"}
    (refused,) = service.handle([json_request("text")])
    assert (refused.status, json.loads(refused.body)["message"]) == (422, "send a JSON list")


def test_image_classifier_subclass_overriding_postprocess(inputs: Path, tmp_path: Path) -> None:
    torch_model_archiver(
        "--model-name", "top2", "-v", "1.0", "--model-file", inputs / "classifier.py",
        "--serialized-file", inputs / "classifier.pth", "--handler", inputs / "top_two.py",
        "--extra-files", inputs / "index_to_name.json", "--export-path", tmp_path,
    )  # fmt: skip
    service = serve(load_archive(tmp_path / "top2.mar", tmp_path / "top2"))
    (output,) = answers(service, [png_request(3)])
    assert len(output["top2"]) == 2
    assert output["best"] == max(output["top2"], key=output["top2"].__getitem__)


@pytest.mark.parametrize("archive_format", ["tgz", "no-archive"])
def test_tgz_and_no_archive_formats(inputs: Path, tmp_path: Path, archive_format: str) -> None:
    torch_model_archiver(
        "--model-name", "mlp", "-v", "1.0", "--serialized-file", inputs / "model.pt",
        "--handler", inputs / "mlp_handler.py", "--export-path", tmp_path,
        "--archive-format", archive_format,
    )  # fmt: skip
    source = tmp_path / ("mlp.tar.gz" if archive_format == "tgz" else "mlp")
    archive = load_archive(source, tmp_path / "extracted")
    (output,) = answers(serve(archive), [json_request(ROWS[0])])
    torch.testing.assert_close(
        torch.tensor(output["scores"]), build(TinyMLP)(torch.tensor(ROWS[0]))
    )


def layout(path: Path) -> tuple[list[str], dict[str, Any]]:
    """Member names (relative to the model folder) and the manifest less its timestamp."""
    if path.is_dir():
        names = [str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()]
        manifest = json.loads((path / "MAR-INF/MANIFEST.json").read_text())
    elif path.name.endswith(".tar.gz"):
        with tarfile.open(path) as bundle:
            names = [n.split("/", 1)[1] for n in bundle.getnames()]
            member = next(n for n in bundle.getnames() if n.endswith("MANIFEST.json"))
            extracted = bundle.extractfile(member)
            assert extracted is not None
            manifest = json.loads(extracted.read())
    else:
        with zipfile.ZipFile(path) as bundle:
            names = bundle.namelist()
            manifest = json.loads(bundle.read("MAR-INF/MANIFEST.json"))
    manifest.pop("createdOn")
    return sorted(names), manifest


@pytest.mark.parametrize(
    ("archive_format", "output"),
    [("default", "full.mar"), ("tgz", "full.tar.gz"), ("no-archive", "full")],
)
def test_marfleet_archive_writes_what_torch_model_archiver_writes(
    inputs: Path, tmp_path: Path, archive_format: str, output: str
) -> None:
    extras = tmp_path / "extras"
    (extras / "nested" / "__pycache__").mkdir(parents=True)
    (extras / "nested" / "table.csv").write_text("1,2\n")
    (extras / "nested" / "__pycache__" / "skip.pyc").write_bytes(b"")
    (extras / "top.txt").write_text("top")
    (tmp_path / "model-config.yaml").write_text("batchSize: 2\n")
    (tmp_path / "requirements.txt").write_text("numpy\n")
    flags = [
        "--model-name", "full", "-v", "3.1", "--model-file", str(inputs / "classifier.py"),
        "--serialized-file", str(inputs / "classifier.pth"),
        "--handler", f"{inputs / 'fn_handler'}:infer",
        "--extra-files", f"{inputs / 'index_to_name.json'},{extras},{inputs / '*.pt'}",
        "-r", str(tmp_path / "requirements.txt"), "-c", str(tmp_path / "model-config.yaml"),
        "--archive-format", archive_format,
    ]  # fmt: skip
    (tmp_path / "real").mkdir()
    (tmp_path / "ours").mkdir()
    torch_model_archiver(*flags, "--export-path", tmp_path / "real")
    assert marfleet_archive([*flags, "--export-path", str(tmp_path / "ours")]) == 0
    assert layout(tmp_path / "ours" / output) == layout(tmp_path / "real" / output)
