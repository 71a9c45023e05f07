"""Opening what users have: a .mar, a .tar.gz or a folder, entering a lone top-level folder."""

from __future__ import annotations

import json
import tarfile
import zipfile
from pathlib import Path

import pytest
from marfleet.runtime.archive.errors import ArchiveError
from marfleet.runtime.archive.reader import archive_stem, load_archive

MANIFEST = {"model": {"modelName": "mlp", "handler": "handler.py", "modelVersion": "1.5"}}


def model_folder(root: Path) -> Path:
    (root / "MAR-INF").mkdir(parents=True)
    (root / "MAR-INF/MANIFEST.json").write_text(json.dumps(MANIFEST))
    (root / "handler.py").write_text("def handle(data, context):\n    return data\n")
    return root


def test_a_mar_is_extracted_and_its_manifest_read(tmp_path: Path) -> None:
    source = model_folder(tmp_path / "src")
    with zipfile.ZipFile(tmp_path / "mlp.mar", "w") as bundle:
        for path in source.rglob("*"):
            bundle.write(path, path.relative_to(source))
    archive = load_archive(tmp_path / "mlp.mar", tmp_path / "out")
    assert archive.model_dir == tmp_path / "out"
    assert (archive.manifest.model_name, archive.manifest.model_version) == ("mlp", "1.5")
    assert (archive.model_dir / "handler.py").is_file()


def test_a_tgz_with_a_top_level_folder_is_entered(tmp_path: Path) -> None:
    source = model_folder(tmp_path / "src" / "mlp")
    with tarfile.open(tmp_path / "mlp.tar.gz", "w:gz") as bundle:
        bundle.add(source, arcname="mlp")
    archive = load_archive(tmp_path / "mlp.tar.gz", tmp_path / "out")
    assert archive.model_dir == tmp_path / "out" / "mlp"
    assert archive.manifest.handler == "handler.py"


def test_a_folder_is_used_in_place_and_its_single_subfolder_entered(tmp_path: Path) -> None:
    model_folder(tmp_path / "unpacked" / "inner")
    (tmp_path / "unpacked" / ".DS_Store").write_text("")
    archive = load_archive(tmp_path / "unpacked", tmp_path / "unused")
    assert archive.model_dir == tmp_path / "unpacked" / "inner"
    assert not (tmp_path / "unused").exists()


def test_a_missing_source_is_named(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="does not exist"):
        load_archive(tmp_path / "nope.mar", tmp_path / "out")


@pytest.mark.parametrize(
    ("name", "stem"),
    [("resnet-18.mar", "resnet-18"), ("m.tar.gz", "m"), ("m.tgz", "m"), ("folder", "folder")],
)
def test_archive_stem(name: str, stem: str) -> None:
    assert archive_stem(Path(name)) == stem
