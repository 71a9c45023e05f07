"""`marfleet archive`: torch-model-archiver's layout rules, formats, errors and progress bar."""

from __future__ import annotations

import json
import os
import select
import tarfile
import time
import zipfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TextIO

import pytest
from marfleet.runtime.archive.cli import main
from marfleet.runtime.archive.errors import ArchiveError
from marfleet.runtime.archive.progress import Progress
from marfleet.runtime.archive.writer import ArchiveFormat, ArchiveSpec, write_archive

CREATED = datetime(2025, 3, 4, 5, 6, 7)


@pytest.fixture
def inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder with the files a model is made of; the current directory during a test."""
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src/handler.py").write_text("def handle(data, context):\n    return data\n")
    (project / "model.py").write_text("class M: ...\n")
    (project / "weights.pt").write_bytes(b"\x00" * 64)
    (project / "labels.json").write_text("{}")
    (project / "vocab.txt").write_text("a\nb\n")
    assets = project / "assets"
    (assets / "nested").mkdir(parents=True)
    (assets / "nested/table.csv").write_text("1,2\n")
    (assets / "top.txt").write_text("top")
    (assets / "__pycache__").mkdir()
    (assets / "__pycache__/x.pyc").write_bytes(b"")
    (assets / ".git").mkdir()
    (assets / ".git/HEAD").write_text("ref")
    (project / "requirements.txt").write_text("numpy\n")
    (project / "model-config.yaml").write_text("batchSize: 4\n")
    (project / "out").mkdir()
    monkeypatch.chdir(project)
    return project


def zip_names(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as bundle:
        return bundle.namelist()


def zip_manifest(path: Path) -> dict[str, object]:
    with zipfile.ZipFile(path) as bundle:
        document: dict[str, object] = json.loads(bundle.read("MAR-INF/MANIFEST.json"))
    return document


def test_full_archive_layout_and_manifest(inputs: Path) -> None:
    spec = ArchiveSpec(
        model_name="mlp",
        version="1.0",
        handler="src/handler.py",
        serialized_file=Path("weights.pt"),
        model_file=Path("model.py"),
        extra_files=("labels.json", "*.txt", "assets"),
        requirements_file=Path("requirements.txt"),
        config_file=Path("model-config.yaml"),
    )
    output = write_archive(spec, Path("out"), created=CREATED)
    assert output == Path("out/mlp.mar")
    assert sorted(zip_names(output)) == [
        "MAR-INF/MANIFEST.json",
        "handler.py",
        "labels.json",
        "model-config.yaml",
        "model.py",
        "nested/table.csv",
        "requirements.txt",
        "top.txt",
        "vocab.txt",
        "weights.pt",
    ]
    assert zip_manifest(output) == {
        "createdOn": "04/03/2025 05:06:07",
        "runtime": "python",
        "model": {
            "modelName": "mlp",
            "serializedFile": "weights.pt",
            "handler": "handler.py",
            "modelFile": "model.py",
            "modelVersion": "1.0",
            "requirementsFile": "requirements.txt",
            "configFile": "model-config.yaml",
        },
        "archiverVersion": "0.12.0",
    }
    with zipfile.ZipFile(output) as bundle:
        assert {info.compress_type for info in bundle.infolist()} == {zipfile.ZIP_DEFLATED}


def test_builtin_handler_is_not_copied(inputs: Path) -> None:
    output = write_archive(ArchiveSpec("ic", "1", "image_classifier"), Path("out"))
    assert zip_names(output) == ["MAR-INF/MANIFEST.json"]
    assert zip_manifest(output)["model"] == {
        "modelName": "ic",
        "handler": "image_classifier",
        "modelVersion": "1",
    }


@pytest.mark.parametrize("handler", ["src/handler:handle", "src/handler.py:handle"])
def test_module_function_handler_keeps_only_the_base_name(inputs: Path, handler: str) -> None:
    output = write_archive(ArchiveSpec("fn", "1", handler), Path("out"))
    assert "handler.py" in zip_names(output)
    model = zip_manifest(output)["model"]
    assert isinstance(model, dict)
    assert model["handler"] == handler.split("/")[-1]


def test_a_later_input_replaces_an_earlier_one_of_the_same_name(inputs: Path) -> None:
    (inputs / "assets/model.py").write_text("# from extra files\n")
    spec = ArchiveSpec(
        "m", "1", "src/handler.py", model_file=Path("model.py"), extra_files=("assets",)
    )
    output = write_archive(spec, Path("out"))
    with zipfile.ZipFile(output) as bundle:
        assert bundle.read("model.py") == b"# from extra files\n"


def test_zip_store_is_uncompressed(inputs: Path) -> None:
    spec = ArchiveSpec("m", "1", "src/handler.py", serialized_file=Path("weights.pt"))
    output = write_archive(spec, Path("out"), ArchiveFormat.ZIP_STORE)
    with zipfile.ZipFile(output) as bundle:
        assert {info.compress_type for info in bundle.infolist()} == {zipfile.ZIP_STORED}


def test_tgz_puts_everything_under_the_model_name(inputs: Path) -> None:
    spec = ArchiveSpec("m", "1", "src/handler.py", extra_files=("assets",))
    output = write_archive(spec, Path("out"), ArchiveFormat.TGZ)
    assert output == Path("out/m.tar.gz")
    with tarfile.open(output) as bundle:
        assert sorted(bundle.getnames()) == [
            "m/MAR-INF/MANIFEST.json",
            "m/handler.py",
            "m/nested/table.csv",
            "m/top.txt",
        ]


def test_no_archive_writes_a_folder_and_force_replaces_it(inputs: Path) -> None:
    spec = ArchiveSpec("m", "1", "src/handler.py", extra_files=("labels.json",))
    output = write_archive(spec, Path("out"), ArchiveFormat.NO_ARCHIVE)
    assert output == Path("out/m")
    assert sorted(p.name for p in output.iterdir()) == ["MAR-INF", "handler.py", "labels.json"]
    (output / "stale.txt").write_text("left from an earlier run")
    write_archive(
        ArchiveSpec("m", "2", "src/handler.py"), Path("out"), ArchiveFormat.NO_ARCHIVE, force=True
    )
    assert sorted(p.name for p in output.iterdir()) == ["MAR-INF", "handler.py"]
    assert sorted(p.name for p in Path("out").iterdir()) == ["m"]


def test_existing_output_needs_force(inputs: Path) -> None:
    write_archive(ArchiveSpec("m", "1", "src/handler.py"), Path("out"))
    with pytest.raises(ArchiveError, match=r"already exists; use -f/--force"):
        write_archive(ArchiveSpec("m", "2", "src/handler.py"), Path("out"))
    write_archive(ArchiveSpec("m", "2", "src/handler.py"), Path("out"), force=True)
    assert zip_manifest(Path("out/m.mar"))["model"] == {
        "modelName": "m",
        "handler": "handler.py",
        "modelVersion": "2",
    }


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (ArchiveSpec("bad name", "1", "image_classifier"), "invalid model name 'bad name'"),
        (ArchiveSpec("m", "1", "missing.py"), "missing.py does not exist"),
        (ArchiveSpec("m", "1", "no_such_module:fn"), "no_such_module.py does not exist"),
        (
            ArchiveSpec("m", "1", "image_classifier", serialized_file=Path("nope.pt")),
            "--serialized-file nope.pt does not exist",
        ),
        (
            ArchiveSpec("m", "1", "image_classifier", extra_files=("nope.txt",)),
            "nope.txt does not exist",
        ),
        (ArchiveSpec("m", "1", "image_classifier", runtime="java"), "unknown --runtime 'java'"),
    ],
)
def test_wrong_inputs_are_named_and_nothing_is_written(
    inputs: Path, spec: ArchiveSpec, message: str
) -> None:
    with pytest.raises(ArchiveError, match=message):
        write_archive(spec, Path("out"))
    assert list(Path("out").iterdir()) == []


def test_export_path_must_be_a_directory(inputs: Path) -> None:
    with pytest.raises(ArchiveError, match="is not an existing directory"):
        write_archive(ArchiveSpec("m", "1", "image_classifier"), Path("no/such/dir"))


def test_an_unmatched_glob_only_warns(inputs: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_archive(ArchiveSpec("m", "1", "image_classifier", extra_files=("*.bin",)), Path("out"))
    assert "'*.bin' matched no file" in caplog.text


def test_lsp_runtime_handlers(inputs: Path) -> None:
    spec = ArchiveSpec("cpp", "1", "TorchScriptHandler", runtime="LSP")
    assert zip_names(write_archive(spec, Path("out"))) == ["MAR-INF/MANIFEST.json"]
    assert zip_manifest(Path("out/cpp.mar"))["runtime"] == "LSP"
    with pytest.raises(ArchiveError, match=r"--handler libcustom\.so does not exist"):
        write_archive(ArchiveSpec("cpp2", "1", "libcustom", runtime="LSP"), Path("out"))


def test_cli_takes_torch_model_archiver_flags(
    inputs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "--model-name", "mlp", "-v", "1.0", "--serialized-file", "weights.pt",
        "--model-file", "model.py", "--handler", "src/handler.py",
        "--extra-files", "labels.json,assets", "-r", "requirements.txt",
        "-c", "model-config.yaml", "--runtime", "python", "--export-path", "out",
        "--archive-format", "default",
    ]  # fmt: skip
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == "out/mlp.mar"
    assert main(argv) == 1
    assert "already exists; use -f/--force" in capsys.readouterr().err
    assert main([*argv, "-f"]) == 0


def test_cli_reports_errors_without_a_traceback(
    inputs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--model-name", "m", "-v", "1", "--handler", "nope.py"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("marfleet archive: error: --handler 'nope.py'")
    assert "Traceback" not in err
    assert main(["--model-name", "m"]) == 2


@pytest.fixture
def terminal() -> Iterator[tuple[int, TextIO]]:
    """A real pseudo-terminal: (the fd to read what was drawn, a text stream on the terminal)."""
    reader, writer = os.openpty()
    stream = os.fdopen(writer, "w")
    yield reader, stream
    stream.close()
    os.close(reader)


def read_until_newline(reader: int, timeout: float = 10) -> str:
    """What was drawn on the terminal up to the bar's final newline.

    The kernel hands a pty's output to the reading side in pieces, from a work queue: one read
    may return only the first redraw on a busy machine, so read until the newline arrives.
    """
    drawn = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in drawn:
        ready, _, _ = select.select([reader], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"the bar never finished its line: {drawn!r}"
        drawn += os.read(reader, 10_000)
    return drawn.decode()


def test_progress_bar_draws_on_a_terminal_for_big_inputs(terminal: tuple[int, TextIO]) -> None:
    reader, stream = terminal
    assert stream.isatty()
    progress = Progress.for_stream("packing big.mar", 200, stream, threshold=100)
    for _ in range(4):
        progress.advance(50)
    progress.finish()
    drawn = read_until_newline(reader)
    assert "packing big.mar [" in drawn
    assert drawn.count("%") == 4
    assert "100%" in drawn


def test_progress_bar_stays_silent_for_small_inputs_or_pipes(
    terminal: tuple[int, TextIO], tmp_path: Path
) -> None:
    reader, stream = terminal
    small = Progress.for_stream("packing", 10, stream, threshold=100)
    with (tmp_path / "log").open("w") as not_a_terminal:
        piped = Progress.for_stream("packing", 10**9, not_a_terminal, threshold=100)
        for progress in (small, piped):
            progress.advance(10**9)
            progress.finish()
    assert (tmp_path / "log").read_text() == ""
    os.set_blocking(reader, False)
    with pytest.raises(BlockingIOError):
        os.read(reader, 100)
