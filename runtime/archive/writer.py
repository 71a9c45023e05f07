"""Packing a model the way torch-model-archiver 0.12 does, so TorchServe and marfleet both load it.

The layout rules are the archiver's: every input lands at the archive root under its base name
(later inputs win on a clash, in the archiver's order), a directory in `--extra-files` is copied
by its contents, built-in handler names are not copied, and `dir/module:function` is written to
the manifest as `module:function`. Unlike the archiver, nothing is staged in a shared temporary
folder: files stream straight into a hidden file beside the output, which is renamed into place
only when complete, so a failed or interrupted run never leaves a half-written archive.
"""

from __future__ import annotations

import glob
import io
import logging
import os
import shutil
import sys
import tarfile
import uuid
import zipfile
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import TextIO

from marfleet.runtime.archive.errors import ArchiveError
from marfleet.runtime.archive.manifest import (
    ARCHIVER_VERSION,
    CREATED_ON_FORMAT,
    MANIFEST_PATH,
    Manifest,
    validate_model_name,
)
from marfleet.runtime.archive.progress import Progress, ProgressReader

logger = logging.getLogger(__name__)

# Handler names the Python runtime resolves itself; the archiver never copies a file for them.
PYTHON_BUILTIN_HANDLERS = frozenset(
    {
        "base_handler",
        "text_classifier",
        "image_classifier",
        "object_detector",
        "image_segmenter",
        "dali_image_classifier",
        "vllm_handler",
        "trt_llm_handler",
    }
)
LSP_BUILTIN_HANDLERS = frozenset({"BaseHandler", "TorchScriptHandler"})
RUNTIMES = ("python", "python3", "LSP")
# Folders the archiver leaves out wherever they appear (plus any whose name starts with ".").
SKIPPED_DIRS = frozenset({"__MACOSX", "__pycache__"})


class ArchiveFormat(StrEnum):
    DEFAULT = "default"
    ZIP_STORE = "zip-store"
    TGZ = "tgz"
    NO_ARCHIVE = "no-archive"

    @property
    def suffix(self) -> str:
        return {"tgz": ".tar.gz", "no-archive": ""}.get(self.value, ".mar")


@dataclass(frozen=True)
class ArchiveSpec:
    """What to pack: torch-model-archiver's inputs, with `--extra-files` split at commas."""

    model_name: str
    version: str
    handler: str
    serialized_file: Path | None = None
    model_file: Path | None = None
    extra_files: tuple[str, ...] = ()
    requirements_file: Path | None = None
    config_file: Path | None = None
    runtime: str = "python"


def archive_path(export_dir: Path, model_name: str, archive_format: ArchiveFormat) -> Path:
    return export_dir / f"{model_name}{archive_format.suffix}"


def build_manifest(spec: ArchiveSpec, created: datetime) -> Manifest:
    return Manifest(
        model_name=spec.model_name,
        model_version=spec.version,
        handler=os.path.basename(spec.handler),
        serialized_file=spec.serialized_file.name if spec.serialized_file else None,
        model_file=spec.model_file.name if spec.model_file else None,
        requirements_file=spec.requirements_file.name if spec.requirements_file else None,
        config_file=spec.config_file.name if spec.config_file else None,
        runtime=spec.runtime,
        created_on=created.strftime(CREATED_ON_FORMAT),
        archiver_version=ARCHIVER_VERSION,
    )


def collect_members(spec: ArchiveSpec) -> dict[str, Path]:
    """Archive name -> source file, in the archiver's order (a later input replaces an earlier)."""
    members: dict[str, Path] = {}
    for option, path in (
        ("--model-file", spec.model_file),
        ("--serialized-file", spec.serialized_file),
        ("--handler", handler_source(spec.handler, spec.runtime)),
    ):
        if path is not None:
            members[path.name] = _existing_file(option, path)
    for entry in spec.extra_files:
        members.update(_extra_members(entry))
    for option, path in (
        ("--requirements-file", spec.requirements_file),
        ("--config-file", spec.config_file),
    ):
        if path is not None:
            members[path.name] = _existing_file(option, path)
    members.pop(MANIFEST_PATH, None)
    return members


def handler_source(handler: str, runtime: str) -> Path | None:
    """The file `--handler` refers to, or None for a built-in handler name."""
    if runtime not in RUNTIMES:
        raise ArchiveError(f"unknown --runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")
    module = handler.split(":", 1)[0]
    if runtime == "LSP":
        if handler in LSP_BUILTIN_HANDLERS:
            return None
        return Path(module + (".dylib" if sys.platform == "darwin" else ".so"))
    if handler in PYTHON_BUILTIN_HANDLERS:
        return None
    path = Path(module if module.endswith(".py") else module + ".py")
    if not path.is_file():
        raise ArchiveError(
            f"--handler {handler!r}: {path} does not exist; give a built-in handler name "
            f"({', '.join(sorted(PYTHON_BUILTIN_HANDLERS))}) or the path of a Python file, "
            "optionally followed by :function"
        )
    return path


def _existing_file(option: str, path: Path) -> Path:
    if not path.is_file():
        raise ArchiveError(f"{option} {path} does not exist or is not a file")
    return path


def _extra_members(entry: str) -> dict[str, Path]:
    entry = entry.strip()
    is_pattern = any(char in entry for char in "*?[")
    if not is_pattern and not Path(entry).exists():
        raise ArchiveError(f"--extra-files: {entry} does not exist")
    matches = sorted(glob.glob(entry))
    if is_pattern and not matches:
        logger.warning("--extra-files pattern %r matched no file", entry)
    members: dict[str, Path] = {}
    for match in map(Path, matches):
        if match.is_file():
            members[match.name] = match
        elif match.is_dir():
            members.update(_folder_members(match))
        else:
            raise ArchiveError(f"--extra-files: {match} is neither a file nor a directory")
    return members


def _folder_members(folder: Path) -> dict[str, Path]:
    """The files under `folder`, named relative to it, skipping the archiver's unwanted folders."""
    members: dict[str, Path] = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.startswith("."))
        for name in sorted(files):
            source = Path(root, name)
            members[PurePosixPath(*source.relative_to(folder).parts).as_posix()] = source
    return members


def write_archive(
    spec: ArchiveSpec,
    export_dir: Path,
    archive_format: ArchiveFormat = ArchiveFormat.DEFAULT,
    *,
    force: bool = False,
    progress_stream: TextIO | None = None,
    created: datetime | None = None,
) -> Path:
    """Pack `spec` into `export_dir` and return the path written (`<name>.mar`, ...).

    Raises ArchiveError for a bad model name, a missing input, a missing export directory, or
    an existing output without `force`. A progress bar goes to `progress_stream` when it is a
    terminal and the inputs are big.
    """
    validate_model_name(spec.model_name)
    if not export_dir.is_dir():
        raise ArchiveError(f"--export-path {export_dir} is not an existing directory")
    output = archive_path(export_dir, spec.model_name, archive_format)
    _check_overwrite(output, force)
    members = collect_members(spec)
    manifest = build_manifest(spec, created or datetime.now()).to_json().encode("utf-8")
    total = sum(path.stat().st_size for path in members.values())
    progress = Progress.for_stream(f"packing {output.name}", total, progress_stream or sys.stderr)
    staging = export_dir / f".{output.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        if archive_format is ArchiveFormat.TGZ:
            _write_tgz(staging, spec.model_name, members, manifest, progress)
        elif archive_format is ArchiveFormat.NO_ARCHIVE:
            _write_folder(staging, members, manifest, progress)
        else:
            stored = archive_format is ArchiveFormat.ZIP_STORE
            _write_zip(staging, members, manifest, progress, stored)
        progress.finish()
        _check_overwrite(output, force)
        _move_into_place(staging, output)
    except BaseException:
        _remove(staging)
        raise
    return output


def _check_overwrite(output: Path, force: bool) -> None:
    if output.exists() and not force:
        raise ArchiveError(f"{output} already exists; use -f/--force to overwrite it")


def _write_zip(
    staging: Path,
    members: dict[str, Path],
    manifest: bytes,
    progress: Progress,
    stored: bool,
) -> None:
    compression = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(staging, "w", compression, allowZip64=True) as bundle:
        for name, source in sorted(members.items()):
            info = zipfile.ZipInfo.from_file(source, name, strict_timestamps=False)
            info.compress_type = compression
            with source.open("rb") as reader, bundle.open(info, "w") as sink:
                shutil.copyfileobj(ProgressReader(reader, progress), sink)
        bundle.writestr(MANIFEST_PATH, manifest)


def _write_tgz(
    staging: Path,
    model_name: str,
    members: dict[str, Path],
    manifest: bytes,
    progress: Progress,
) -> None:
    with tarfile.open(staging, "w:gz") as bundle:
        for name, source in sorted(members.items()):
            status = source.stat()
            info = tarfile.TarInfo(f"{model_name}/{name}")
            info.size, info.mtime, info.mode = status.st_size, int(status.st_mtime), 0o644
            with source.open("rb") as reader:
                bundle.addfile(info, ProgressReader(reader, progress))
        info = tarfile.TarInfo(f"{model_name}/{MANIFEST_PATH}")
        info.size, info.mode = len(manifest), 0o644
        bundle.addfile(info, io.BytesIO(manifest))


def _write_folder(
    staging: Path, members: dict[str, Path], manifest: bytes, progress: Progress
) -> None:
    for name, source in sorted(members.items()):
        destination = staging / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        with source.open("rb") as reader, destination.open("wb") as sink:
            shutil.copyfileobj(ProgressReader(reader, progress), sink)
        shutil.copystat(source, destination)
    (staging / MANIFEST_PATH).parent.mkdir(parents=True, exist_ok=True)
    (staging / MANIFEST_PATH).write_bytes(manifest)


def _move_into_place(staging: Path, output: Path) -> None:
    if output.is_dir() and not output.is_symlink():
        retired = output.with_name(f".{output.name}.old-{uuid.uuid4().hex[:8]}")
        output.rename(retired)
        staging.rename(output)
        shutil.rmtree(retired)
    else:
        os.replace(staging, output)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
