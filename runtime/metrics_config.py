"""TorchServe's `metrics_config` (a metrics.yaml): which metrics are exported, their types, labels.

TorchServe 0.12 in Prometheus mode exports exactly the metrics its metrics.yaml declares: the
frontend's under `ts_metrics`, the workers' (the handler's `context.metrics`, HandlerTime and
PredictionTime) under `model_metrics`, each as `counter`, `gauge` or `histogram` with the
declared `dimensions` as labels (a worker's metrics also get `Hostname`). A metric left out is
not exported; a handler metric that is not declared is dropped unless
`model_metrics_auto_detect=true`. Without a `metrics_config` the default is TorchServe's own
file, copied below (a test compares it with the installed TorchServe's).

This module only reads and checks the file; runtime/metrics.py builds the series from it.
The labels of a frontend metric are values marfleet knows for it (`Level`, `Hostname`, the
model ...), so a `ts_metrics` entry may list those, in any order, and no others.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

KINDS = ("counter", "gauge", "histogram")
METRIC_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_METRICS_CONFIG_BYTES = 1024 * 1024

_HOST = ("Level", "Hostname")
_TS = ("model_name", "model_version", "hostname")
# the dimensions TorchServe's frontend gives each of its metrics
FRONTEND_DIMENSIONS: dict[str, tuple[str, ...]] = {
    "Requests2XX": _HOST,
    "Requests4XX": _HOST,
    "Requests5XX": _HOST,
    "ts_inference_requests_total": _TS,
    "ts_inference_latency_microseconds": _TS,
    "ts_queue_latency_microseconds": _TS,
    "QueueTime": _HOST,
    "WorkerThreadTime": _HOST,
    "WorkerLoadTime": ("WorkerName", *_HOST),
    "CPUUtilization": _HOST,
    "MemoryUsed": _HOST,
    "MemoryAvailable": _HOST,
    "MemoryUtilization": _HOST,
    "DiskUsage": _HOST,
    "DiskUtilization": _HOST,
    "DiskAvailable": _HOST,
    "GPUMemoryUtilization": ("Level", "DeviceId", "Hostname"),
    "GPUMemoryUsed": ("Level", "DeviceId", "Hostname"),
    "GPUUtilization": ("Level", "DeviceId", "Hostname"),
}

# TorchServe 0.12's ts/configs/metrics.yaml
DEFAULT_METRICS_YAML = """
dimensions:
  - &model_name "ModelName"
  - &worker_name "WorkerName"
  - &level "Level"
  - &device_id "DeviceId"
  - &hostname "Hostname"

ts_metrics:
  counter:
    - name: Requests2XX
      unit: Count
      dimensions: [*level, *hostname]
    - name: Requests4XX
      unit: Count
      dimensions: [*level, *hostname]
    - name: Requests5XX
      unit: Count
      dimensions: [*level, *hostname]
    - name: ts_inference_requests_total
      unit: Count
      dimensions: ["model_name", "model_version", "hostname"]
    - name: ts_inference_latency_microseconds
      unit: Microseconds
      dimensions: ["model_name", "model_version", "hostname"]
    - name: ts_queue_latency_microseconds
      unit: Microseconds
      dimensions: ["model_name", "model_version", "hostname"]

  gauge:
    - name: QueueTime
      unit: Milliseconds
      dimensions: [*level, *hostname]
    - name: WorkerThreadTime
      unit: Milliseconds
      dimensions: [*level, *hostname]
    - name: WorkerLoadTime
      unit: Milliseconds
      dimensions: [*worker_name, *level, *hostname]
    - name: CPUUtilization
      unit: Percent
      dimensions: [*level, *hostname]
    - name: MemoryUsed
      unit: Megabytes
      dimensions: [*level, *hostname]
    - name: MemoryAvailable
      unit: Megabytes
      dimensions: [*level, *hostname]
    - name: MemoryUtilization
      unit: Percent
      dimensions: [*level, *hostname]
    - name: DiskUsage
      unit: Gigabytes
      dimensions: [*level, *hostname]
    - name: DiskUtilization
      unit: Percent
      dimensions: [*level, *hostname]
    - name: DiskAvailable
      unit: Gigabytes
      dimensions: [*level, *hostname]
    - name: GPUMemoryUtilization
      unit: Percent
      dimensions: [*level, *device_id, *hostname]
    - name: GPUMemoryUsed
      unit: Megabytes
      dimensions: [*level, *device_id, *hostname]
    - name: GPUUtilization
      unit: Percent
      dimensions: [*level, *device_id, *hostname]

model_metrics:
  # Dimension "Hostname" is automatically added for model metrics in the backend
  gauge:
    - name: HandlerTime
      unit: ms
      dimensions: [*model_name, *level]
    - name: PredictionTime
      unit: ms
      dimensions: [*model_name, *level]
"""


class MetricsConfigError(ValueError):
    """The metrics_config file cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str  # counter, gauge or histogram
    unit: str
    dimensions: tuple[str, ...]  # label names, in order


@dataclass(frozen=True)
class MetricsConfig:
    frontend: Mapping[str, MetricSpec] = field(default_factory=dict)  # ts_metrics
    model: Mapping[str, MetricSpec] = field(default_factory=dict)  # model_metrics
    auto_detect: bool = False  # model_metrics_auto_detect: undeclared handler metrics too


def default_metrics_config(*, auto_detect: bool = False) -> MetricsConfig:
    return parse_metrics_config(DEFAULT_METRICS_YAML, "TorchServe's default", auto_detect)


def load_metrics_config(path: Path | None, *, auto_detect: bool = False) -> MetricsConfig:
    """The metrics.yaml at `path` (TorchServe's default for None); MetricsConfigError says what
    is wrong with it."""
    if path is None:
        return default_metrics_config(auto_detect=auto_detect)
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_METRICS_CONFIG_BYTES + 1)
    except OSError as error:
        raise MetricsConfigError(
            f"metrics_config {path} cannot be read ({error.strerror})"
        ) from None
    if len(raw) > MAX_METRICS_CONFIG_BYTES:
        raise MetricsConfigError(
            f"metrics_config {path} is larger than {MAX_METRICS_CONFIG_BYTES} bytes"
        )
    return parse_metrics_config(raw.decode("utf-8", "replace"), str(path), auto_detect)


def parse_metrics_config(text: str, where: str, auto_detect: bool = False) -> MetricsConfig:
    try:
        document = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise MetricsConfigError(f"metrics_config {where} is not valid YAML: {error}") from None
    if not isinstance(document, dict):
        raise MetricsConfigError(f"metrics_config {where}: expected a mapping with ts_metrics")
    frontend = _section(document, "ts_metrics", where)
    for spec in frontend.values():
        known = FRONTEND_DIMENSIONS.get(spec.name)
        unknown = [d for d in spec.dimensions if known is not None and d not in known]
        if unknown:
            raise MetricsConfigError(
                f"metrics_config {where}: ts_metrics {spec.name} dimensions {unknown} are not "
                f"ones TorchServe gives it (use some of {list(known or ())})"
            )
    return MetricsConfig(frontend, _section(document, "model_metrics", where), auto_detect)


def _section(document: dict[str, object], key: str, where: str) -> dict[str, MetricSpec]:
    section = document.get(key) or {}
    if not isinstance(section, dict):
        raise MetricsConfigError(f"metrics_config {where}: {key} must map types to lists")
    specs: dict[str, MetricSpec] = {}
    for kind, entries in section.items():
        if kind not in KINDS:
            raise MetricsConfigError(
                f"metrics_config {where}: {key} type {kind!r} is not one of {', '.join(KINDS)}"
            )
        for index, entry in enumerate(entries or []):
            spec = _spec(entry, kind, f"{where}: {key}.{kind}[{index}]")
            specs[spec.name] = spec  # a later entry of the same name wins, as in TorchServe
    return specs


def _spec(entry: object, kind: str, where: str) -> MetricSpec:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
        raise MetricsConfigError(f"metrics_config {where} needs a name")
    if not METRIC_NAME.fullmatch(entry["name"]):
        raise MetricsConfigError(
            f"metrics_config {where}: {entry['name']!r} is not a Prometheus metric name"
        )
    dimensions = entry.get("dimensions") or []
    if not isinstance(dimensions, list) or not all(
        isinstance(d, str) and LABEL_NAME.fullmatch(d) for d in dimensions
    ):
        raise MetricsConfigError(
            f"metrics_config {where}: dimensions must be a list of label names (letters, digits, _)"
        )
    return MetricSpec(entry["name"], kind, str(entry.get("unit", "")), tuple(dimensions))
