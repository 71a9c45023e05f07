"""MAR-INF/MANIFEST.json: the one file that makes a folder a model archive.

The writer must produce exactly the keys, key order and formatting of torch-model-archiver 0.12
(TorchServe and existing tooling read them); the reader must accept manifests from any archiver
release, including fields it has never heard of, so parsing keeps the raw dictionary next to the
few typed fields marfleet itself needs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marfleet.runtime.archive.errors import ArchiveError, ManifestError, UnsafeArchiveError
from marfleet.runtime.archive.extract import safe_relative_path

MAR_INF = "MAR-INF"
MANIFEST_PATH = f"{MAR_INF}/MANIFEST.json"
# The torch-model-archiver release whose format `marfleet archive` writes.
ARCHIVER_VERSION = "0.12.0"
DEFAULT_MODEL_VERSION = "1.0"
CREATED_ON_FORMAT = "%d/%m/%Y %H:%M:%S"
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$")


MAX_NAME_LENGTH = 255


def validate_model_name(name: str) -> None:
    """Refuse a name TorchServe would refuse (it becomes a URL path segment and a file name)."""
    if len(name) > MAX_NAME_LENGTH or not MODEL_NAME_PATTERN.fullmatch(name):
        raise ArchiveError(
            f"invalid model name {name!r}: it must start with a letter or digit and contain only "
            f"letters, digits, '_', '-' and '.' (pattern {MODEL_NAME_PATTERN.pattern}, at most "
            f"{MAX_NAME_LENGTH} characters)"
        )


def validate_model_version(version: str) -> None:
    """Refuse a version that could not be addressed as `/models/{name}/{version}`."""
    if (
        len(version) > MAX_NAME_LENGTH
        or not MODEL_NAME_PATTERN.fullmatch(version)
        or version == "all"
    ):
        raise ArchiveError(
            f"invalid model version {version!r}: it must start with a letter or digit and "
            "contain only letters, digits, '_', '-' and '.', and 'all' is reserved "
            "(GET /models/{name}/all lists every version)"
        )


@dataclass(frozen=True)
class Manifest:
    """The fields of a manifest that marfleet uses; `raw` keeps the whole document."""

    model_name: str
    model_version: str
    handler: str
    serialized_file: str | None = None
    model_file: str | None = None
    requirements_file: str | None = None
    config_file: str | None = None
    runtime: str = "python"
    created_on: str | None = None
    archiver_version: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The manifest as torch-model-archiver writes it (same keys, same order)."""
        model: dict[str, Any] = {"modelName": self.model_name}
        if self.serialized_file:
            model["serializedFile"] = self.serialized_file
        model["handler"] = self.handler
        if self.model_file:
            model["modelFile"] = self.model_file
        if self.model_version:
            model["modelVersion"] = self.model_version
        if self.requirements_file:
            model["requirementsFile"] = self.requirements_file
        if self.config_file:
            model["configFile"] = self.config_file
        document: dict[str, Any] = {}
        if self.created_on:
            document["createdOn"] = self.created_on
        document["runtime"] = self.runtime
        document["model"] = model
        if self.archiver_version:
            document["archiverVersion"] = self.archiver_version
        return document

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, document: object, *, default_name: str) -> Manifest:
        """Parse a manifest of any archiver release; only `model.handler` is required."""
        if not isinstance(document, dict) or not isinstance(document.get("model"), dict):
            raise ManifestError(f"{MANIFEST_PATH} has no 'model' object")
        model = document["model"]
        handler = model.get("handler")
        if not isinstance(handler, str) or not handler:
            raise ManifestError(f"{MANIFEST_PATH} names no model.handler")
        _check_inside("handler", handler.partition(":")[0])
        for key in _FILE_KEYS:
            value = _text(model, key)
            if value is not None:
                _check_inside(key, value)
        return cls(
            model_name=_text(model, "modelName") or default_name,
            model_version=_text(model, "modelVersion") or DEFAULT_MODEL_VERSION,
            handler=handler,
            serialized_file=_text(model, "serializedFile"),
            model_file=_text(model, "modelFile"),
            requirements_file=_text(model, "requirementsFile"),
            config_file=_text(model, "configFile"),
            runtime=_text(document, "runtime") or "python",
            created_on=_text(document, "createdOn"),
            archiver_version=_text(document, "archiverVersion"),
            raw=document,
        )


_FILE_KEYS = ("serializedFile", "modelFile", "requirementsFile", "configFile", "extraFiles")


def _check_inside(key: str, value: str) -> None:
    """A file the manifest names must be inside the archive (each of a comma list, too)."""
    for part in value.split(",") if key == "extraFiles" else [value]:
        try:
            safe_relative_path(part.strip())
        except UnsafeArchiveError as error:
            raise ManifestError(
                f"{MANIFEST_PATH}: model.{key} {part.strip()!r} points outside the archive "
                f"({error.reason})"
            ) from None


def _text(mapping: dict[str, Any], key: str) -> str | None:
    value = mapping.get(key)
    return str(value) if value not in (None, "") else None


def read_manifest(model_dir: Path, *, default_name: str) -> Manifest:
    """Read `model_dir/MAR-INF/MANIFEST.json`; `default_name` stands in for a missing modelName."""
    path = model_dir / MANIFEST_PATH
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(
            f"{model_dir} is not a model archive: {MANIFEST_PATH} is missing "
            "(pack the model with `marfleet archive` or torch-model-archiver)"
        ) from None
    except UnicodeDecodeError:
        raise ManifestError(f"{MANIFEST_PATH} is not UTF-8 text") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ManifestError(f"{path} is not valid JSON: {error}") from None
    return Manifest.from_dict(document, default_name=default_name)
