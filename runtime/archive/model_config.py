"""An archive's model-config.yaml, read the one way both the frontend and the worker need it.

The manifest names the file (`model.configFile`); it must stay inside the model directory
(no absolute path, no `..`, no symlink out of it), and it is read as at most 1 MiB of UTF-8
YAML. Errors name the file and the position of the problem, never the file's contents: a
configFile pointed at a secret must not echo the secret into a 400 or a log line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from marfleet.runtime.archive.errors import ManifestError, UnsafeArchiveError
from marfleet.runtime.archive.extract import safe_relative_path

MAX_MODEL_CONFIG_BYTES = 1024 * 1024


def confined(model_dir: Path, relative: str, field: str) -> Path:
    """`model_dir / relative`, refusing a path that leaves `model_dir` (ManifestError)."""
    try:
        safe_relative_path(relative)
    except UnsafeArchiveError as error:
        raise ManifestError(
            f"{field} {relative!r} points outside the archive: {error.reason}"
        ) from None
    path = model_dir / relative
    if not path.resolve().is_relative_to(model_dir.resolve()):
        raise ManifestError(f"{field} {relative!r} points outside the archive (a symlink)")
    return path


def read_model_config(model_dir: Path, config_file: str) -> dict[str, Any]:
    """The settings in `config_file`; ManifestError saying what is wrong, without contents."""
    path = confined(model_dir, config_file, "model.configFile")
    where = f"model-config file {config_file}"
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_MODEL_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ManifestError(f"{where} is not in the archive") from None
    except OSError as error:
        raise ManifestError(f"{where} cannot be read ({error.strerror})") from None
    if len(raw) > MAX_MODEL_CONFIG_BYTES:
        raise ManifestError(f"{where} is larger than {MAX_MODEL_CONFIG_BYTES} bytes")
    try:
        loaded = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ManifestError(f"{where} is not UTF-8 text") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        position = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "not valid YAML"
        raise ManifestError(f"{where} is not valid YAML{position}: {problem}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ManifestError(f"{where}: expected a mapping of settings")
    return loaded
