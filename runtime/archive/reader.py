"""From whatever the user has (`.mar`, `.tar.gz`, or an unpacked folder) to a model directory.

TorchServe accepts all three and enters a lone top-level folder (the `tgz` layout of
torch-model-archiver puts everything under `<model-name>/`), so this module does the same. An
unpacked folder is used where it is: it is already on the machine and trusted as any local file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from marfleet.runtime.archive.errors import ArchiveError
from marfleet.runtime.archive.extract import ExtractionLimits, extract_archive
from marfleet.runtime.archive.manifest import MANIFEST_PATH, Manifest, read_manifest

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".mar", ".zip")
IGNORED_TOP_LEVEL = ("__MACOSX",)


@dataclass(frozen=True)
class ModelArchive:
    """A model ready to load: the directory holding MAR-INF/ and the files, and its manifest."""

    model_dir: Path
    manifest: Manifest


def archive_stem(source: Path) -> str:
    """`resnet-18.mar` -> `resnet-18`; the model name when a manifest does not give one."""
    name = source.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def load_archive(
    source: Path, extract_to: Path, limits: ExtractionLimits | None = None
) -> ModelArchive:
    """Open `source`: a folder is used in place, an archive is safely extracted to `extract_to`.

    `extract_to` must not exist yet; it is created only when the whole archive passes the checks
    of `extract_archive` (raises `UnsafeArchiveError`, `ManifestError` or `ArchiveError`).
    """
    if not source.exists():
        raise ArchiveError(f"model archive {source} does not exist")
    if source.is_dir():
        root = source
    else:
        extract_archive(source, extract_to, limits or ExtractionLimits())
        root = extract_to
    model_dir = enter_single_folder(root)
    return ModelArchive(model_dir, read_manifest(model_dir, default_name=archive_stem(source)))


def enter_single_folder(root: Path) -> Path:
    """`root`, or its only sub-folder when `root` itself has no manifest (TorchServe's rule)."""
    if (root / MANIFEST_PATH).is_file():
        return root
    entries = [
        entry
        for entry in root.iterdir()
        if not entry.name.startswith(".") and entry.name not in IGNORED_TOP_LEVEL
    ]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return root
