"""MANIFEST.json: written as torch-model-archiver writes it, read from any archiver release."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from marfleet.runtime.archive.errors import ArchiveError, ManifestError
from marfleet.runtime.archive.manifest import (
    Manifest,
    read_manifest,
    validate_model_name,
    validate_model_version,
)
from marfleet.runtime.archive.model_config import read_model_config


def write_manifest(model_dir: Path, document: object) -> Path:
    (model_dir / "MAR-INF").mkdir(parents=True)
    (model_dir / "MAR-INF/MANIFEST.json").write_text(json.dumps(document))
    return model_dir


def test_to_json_has_the_archivers_keys_in_its_order() -> None:
    manifest = Manifest(
        model_name="resnet",
        model_version="2.0",
        handler="handler.py",
        serialized_file="model.pt",
        model_file="model.py",
        requirements_file="requirements.txt",
        config_file="model-config.yaml",
        created_on="01/02/2025 10:11:12",
        archiver_version="0.12.0",
    )
    document = json.loads(manifest.to_json())
    assert list(document) == ["createdOn", "runtime", "model", "archiverVersion"]
    assert list(document["model"]) == [
        "modelName",
        "serializedFile",
        "handler",
        "modelFile",
        "modelVersion",
        "requirementsFile",
        "configFile",
    ]
    assert manifest.to_json().startswith('{\n  "createdOn"')


def test_absent_optional_files_are_left_out() -> None:
    document = Manifest("m", "1.0", "image_classifier").to_dict()
    assert document["model"] == {
        "modelName": "m",
        "handler": "image_classifier",
        "modelVersion": "1.0",
    }


def test_an_old_mms_manifest_with_unknown_keys_is_read(tmp_path: Path) -> None:
    old = {
        "specificationVersion": "1.0",
        "implementationVersion": "1.0",
        "modelServerVersion": "1.0",
        "license": "Apache 2.0",
        "runtime": "python",
        "engine": {"engineName": "MXNet", "engineVersion": "1.4"},
        "model": {
            "modelName": "squeezenet",
            "description": "old",
            "handler": "mxnet_vision_service:handle",
        },
        "publisher": {"author": "someone"},
    }
    manifest = read_manifest(write_manifest(tmp_path, old), default_name="fallback")
    assert manifest.model_name == "squeezenet"
    assert manifest.model_version == "1.0"
    assert manifest.handler == "mxnet_vision_service:handle"
    assert manifest.raw["engine"]["engineName"] == "MXNet"


def test_a_missing_model_name_falls_back_to_the_archive_name(tmp_path: Path) -> None:
    manifest = read_manifest(
        write_manifest(tmp_path, {"model": {"handler": "h.py", "modelVersion": "3"}}),
        default_name="from-file-name",
    )
    assert (manifest.model_name, manifest.model_version) == ("from-file-name", "3")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"runtime": "python"}, "no 'model' object"),
        ({"model": {"modelName": "m"}}, "names no model.handler"),
        ([1, 2], "no 'model' object"),
    ],
)
def test_manifests_without_a_handler_are_refused(
    tmp_path: Path, document: object, message: str
) -> None:
    with pytest.raises(ManifestError, match=message):
        read_manifest(write_manifest(tmp_path, document), default_name="m")


def test_a_folder_without_manifest_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"MANIFEST\.json is missing"):
        read_manifest(tmp_path, default_name="m")


def test_invalid_json_is_reported_with_its_path(tmp_path: Path) -> None:
    (tmp_path / "MAR-INF").mkdir()
    (tmp_path / "MAR-INF/MANIFEST.json").write_text("{not json")
    with pytest.raises(ManifestError, match="is not valid JSON"):
        read_manifest(tmp_path, default_name="m")


@pytest.mark.parametrize("name", ["resnet-18", "bert_base.v2", "7b"])
def test_valid_model_names(name: str) -> None:
    validate_model_name(name)


@pytest.mark.parametrize("name", ["", "-lead", ".hidden", "has space", "a/b", "ünï"])
def test_invalid_model_names_are_refused(name: str) -> None:
    with pytest.raises(ArchiveError, match="invalid model name"):
        validate_model_name(name)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("configFile", "../../etc/passwd"),
        ("configFile", "/etc/passwd"),
        ("serializedFile", "../model.pt"),
        ("handler", "../../outside/handler.py:handle"),
        ("extraFiles", "ok.txt,../secret.txt"),
    ],
)
def test_files_the_manifest_names_must_be_inside_the_archive(
    tmp_path: Path, key: str, value: str
) -> None:
    model = {"handler": "h.py", key: value}
    write_manifest(tmp_path, {"model": model})
    with pytest.raises(ManifestError, match=f"model.{key} .* points outside the archive"):
        read_manifest(tmp_path, default_name="m")


def test_model_config_errors_never_show_the_file(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("token: SECRET-VALUE\n  - [unclosed: SECRET-TWO\n")
    with pytest.raises(ManifestError) as raised:
        read_model_config(tmp_path, "bad.yaml")
    assert "line 2" in str(raised.value) and "SECRET" not in str(raised.value)
    outside = tmp_path.parent / f"{tmp_path.name}-secret.yaml"
    outside.write_text("SECRET-THREE\n")
    (tmp_path / "link.yaml").symlink_to(outside)
    with pytest.raises(ManifestError, match="points outside the archive"):
        read_model_config(tmp_path, "link.yaml")
    with pytest.raises(ManifestError, match="points outside the archive"):
        read_model_config(tmp_path, f"../{outside.name}")


@pytest.mark.parametrize("version", ["1.0", "2", "v1.2-rc_1"])
def test_valid_model_versions(version: str) -> None:
    validate_model_version(version)


@pytest.mark.parametrize("version", ["", "all", "1.0\n", "a/b", "1 0", "x" * 256])
def test_versions_that_could_not_be_addressed_are_refused(version: str) -> None:
    with pytest.raises(ArchiveError, match="invalid model version"):
        validate_model_version(version)


def test_a_name_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(ArchiveError, match="invalid model name"):
        validate_model_name("resnet\n")
