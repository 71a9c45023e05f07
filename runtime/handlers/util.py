"""Helpers TorchServe exposes in `ts.utils.util` that handlers import by name.

Their behaviour, odd corners included (a list label keeps its last element, the old
`object_type_names` layout), is what existing `index_to_name.json` files rely on.
"""

from __future__ import annotations

import inspect
import itertools
import json
import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

logger = logging.getLogger(__name__)

CLEANUP_REGEX = re.compile("<.*?>|&([a-z0-9]+|#[0-9]{1,6}|#x[0-9a-f]{1,6});")


def list_classes_from_module(module: ModuleType, parent_class: type | None = None) -> list[type]:
    """The classes `module` defines itself (imported ones do not count), optionally filtered."""
    classes = [
        member
        for _, member in inspect.getmembers(module, inspect.isclass)
        if member.__module__ == module.__name__
    ]
    if parent_class is not None:
        return [cls for cls in classes if issubclass(cls, parent_class)]
    return classes


def load_label_mapping(mapping_file_path: str | Path) -> dict[str, str] | None:
    """Read `index_to_name.json` ({"0": "cat"} or {"0": ["n0212", "cat"]}); None when absent."""
    path = Path(mapping_file_path)
    if not path.is_file():
        logger.warning(
            "label mapping missing; outputs will carry class indices",
            extra={"path": str(path)},
        )
        return None
    mapping = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(mapping, dict):
        raise ValueError(f'{path}: the label mapping must be a JSON object {{"0": "label", ...}}')
    names = mapping.get("object_type_names")
    if isinstance(names, list):
        return {str(index): str(name) for index, name in enumerate(names)}
    labels: dict[str, str] = {}
    for key, value in mapping.items():
        label = value[-1] if isinstance(value, list) and value else value
        if not isinstance(label, str):
            raise ValueError(f"{path}: label {key!r} must be a string or a list of strings")
        labels[str(key)] = label
    return labels


def map_class_to_label(
    probs: list[Any],
    mapping: dict[str, str] | None = None,
    lbl_classes: Iterable[Sequence[Any]] | None = None,
) -> list[dict[str, Any]]:
    """One {label: probability} dict per row; labels come from `mapping` or are the indices."""
    if not isinstance(probs, list):
        raise TypeError("map_class_to_label needs a list (call .tolist() on tensors first)")
    if mapping is not None and not isinstance(mapping, dict):
        raise TypeError("the label mapping must be a dict")
    classes: Iterable[Sequence[Any]] = (
        lbl_classes
        if lbl_classes is not None
        else itertools.repeat(range(len(probs[0])), len(probs))
    )
    return [
        {
            (mapping[str(label)] if mapping is not None else str(label)): prob
            for label, prob in zip(row_classes, row_probs, strict=False)
        }
        for row_classes, row_probs in zip(classes, probs, strict=False)
    ]


def get_yaml_config(yaml_file_path: str | Path) -> dict[str, Any]:
    """A model-config.yaml as a dict (an empty file is an empty config)."""
    with open(yaml_file_path, encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ValueError(f"{yaml_file_path}: a model config must be a YAML mapping")
    return config
