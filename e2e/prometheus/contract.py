"""The metric names components promise (docs/metrics.md) and the ones they really expose.

Both are reduced to sample names (`x_total`, `x_bucket`, `x_sum`, `x_count`, ...), the names
PromQL selects, so an expression's metric names can be checked against either directly.
"""

from __future__ import annotations

import re
from pathlib import Path

from .chart import REPO_ROOT

METRICS_DOC = REPO_ROOT / "docs" / "metrics.md"
_SUFFIXES = {
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
    "counter": ("",),
    "gauge": ("",),
    "untyped": ("",),
    "unknown": ("",),
}
# First cell of a metrics table row: one or more backticked names; then the type cell.
_ROW = re.compile(r"^\|\s*((?:`[^`]+`(?:,\s*)?)+)\s*\|\s*(\w+)\s*\|", re.M)


def sample_names(family: str, kind: str) -> set[str]:
    suffixes = _SUFFIXES.get(kind)
    if suffixes is None:
        raise ValueError(f"unknown metric type {kind!r} for {family}")
    return {family + suffix for suffix in suffixes}


def documented_samples(doc: Path = METRICS_DOC) -> set[str]:
    """Sample names of every metric in the tables of docs/metrics.md."""
    names: set[str] = set()
    for cell, kind in _ROW.findall(doc.read_text()):
        for family in re.findall(r"`([^`]+)`", cell):
            names |= sample_names(family, kind)
    return names


def exposed_samples(exposition: str) -> set[str]:
    """Sample names a Prometheus text-format page declares (`# TYPE`) or carries samples of."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(maxsplit=3)
            names |= sample_names(family, kind.strip())
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def documented_adapter_queries(doc: Path = METRICS_DOC) -> dict[str, str]:
    """HPA metric name -> the per-pod expression docs/metrics.md says the adapter serves."""
    rows = re.findall(r"^\|\s*`\w+`\s*\|\s*`(\w+)`\s*\|\s*`([^`]+)`\s*\|", doc.read_text(), re.M)
    return dict(rows)
