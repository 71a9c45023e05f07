"""`context.metrics`: TorchServe's handler metrics API, recorded instead of printed.

TorchServe workers print metrics to stdout for the frontend to parse; marfleet keeps them as
`HandlerMetric` records that the service hands to a sink after each call, and the frontend
exports them as TorchServe does (runtime/metrics.py, metrics_config.py). The method names and
signatures are TorchServe's
(`add_counter`, `add_time(name, value, idx, unit, dimensions, metric_type)`, the
`add_metric_to_cache`/`add_or_update` pair, ...) so handlers call them unchanged; dimensions and
metric types from the real `ts` package are accepted too, by their `name`/`value` attributes.
The helpers add TorchServe's default dimensions: `ModelName` and `Level: Model` while a batch
is handled, `Level: Error` outside one (at load) and for `add_error`; `add_metric_to_cache`
metrics carry exactly the dimensions declared.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

TIME_UNITS = ("ms", "s")
SIZE_UNITS = ("MB", "kB", "GB", "B")


class MetricTypes(enum.Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


class Dimension:
    """A metric label (TorchServe's `ts.metrics.dimension.Dimension`)."""

    def __init__(self, name: str, value: str) -> None:
        self.name = name
        self.value = value

    def __str__(self) -> str:
        return f"{self.name}:{self.value}"

    def to_dict(self) -> dict[str, str]:
        return {"Name": self.name, "Value": self.value}


@dataclass(frozen=True)
class HandlerMetric:
    """One metric update made by a handler."""

    name: str
    value: float
    unit: str
    dimensions: dict[str, str]
    kind: str  # "counter" | "gauge" | "histogram"


def _kind(metric_type: Any) -> str:
    kind = str(getattr(metric_type, "value", metric_type)).lower()
    if kind not in ("counter", "gauge", "histogram"):
        raise ValueError(
            f"unknown metric type {metric_type!r}: use MetricTypes.COUNTER/GAUGE/HISTOGRAM"
        )
    return kind


def _labels(dimensions: Sequence[Any] | None) -> dict[str, str]:
    return {str(dim.name): str(dim.value) for dim in dimensions or ()}


class CachedMetric:
    """A metric declared with `add_metric_to_cache`; `add_or_update` records a value."""

    def __init__(
        self,
        recorder: HandlerMetrics,
        metric_name: str,
        unit: str,
        dimension_names: Sequence[str],
        kind: str,
    ) -> None:
        self.recorder = recorder
        self.metric_name = metric_name
        self.unit = unit
        self.dimension_names = list(dimension_names)
        self.kind = kind

    def add_or_update(
        self,
        value: float,
        dimension_values: Sequence[str] = (),
        request_id: str = "",
    ) -> None:
        if len(dimension_values) != len(self.dimension_names):
            logger.error(
                "metric update dropped: dimension values do not match the declared names",
                extra={"metric": self.metric_name, "dimension_names": self.dimension_names},
            )
            return
        labels = {
            name: str(value)
            for name, value in zip(self.dimension_names, dimension_values, strict=True)
        }
        self.recorder.record(self.metric_name, value, self.unit, labels, self.kind)

    def update(self, value: float, request_id: str = "", dimensions: Sequence[Any] = ()) -> None:
        """TorchServe's older form: dimensions as Dimension objects."""
        labels = _labels(dimensions)
        self.add_or_update(value, [labels.get(name, "") for name in self.dimension_names])


class HandlerMetrics:
    """The object handlers reach as `context.metrics`; `drain()` hands over what they recorded."""

    def __init__(self, model_name: str = "") -> None:
        self.model_name = model_name
        self.request_ids: dict[int, str] | None = None
        self._records: list[HandlerMetric] = []
        self._cache: dict[tuple[str, str], CachedMetric] = {}

    def set_request_ids(self, request_ids: dict[int, str] | None) -> None:
        self.request_ids = request_ids

    def record(
        self, name: str, value: float, unit: str, dimensions: dict[str, str], kind: str
    ) -> None:
        if kind == "counter" and value < 0:
            logger.error("metric update dropped: a counter cannot decrease", extra={"metric": name})
            return
        self._records.append(HandlerMetric(name, float(value), unit, dimensions, kind))

    def _with_defaults(
        self, dimensions: Sequence[Any] | None, *, error: bool = False
    ) -> dict[str, str]:
        """The dimensions plus TorchServe's defaults (`_add_default_dims`): ModelName and
        Level=Model within a batch, Level=Error outside one; a dimension given wins."""
        labels = _labels(dimensions)
        if error or self.request_ids is None:
            labels.setdefault("Level", "Error")
        else:
            labels.setdefault("ModelName", self.model_name)
            labels.setdefault("Level", "Model")
        return labels

    def drain(self) -> list[HandlerMetric]:
        records, self._records = self._records, []
        return records

    def add_metric(
        self,
        name: str,
        value: float,
        unit: str,
        idx: str | None = None,
        dimensions: Sequence[Any] | None = None,
        metric_type: Any = MetricTypes.COUNTER,
    ) -> None:
        self.record(name, value, unit, self._with_defaults(dimensions), _kind(metric_type))

    def add_counter(
        self,
        name: str,
        value: float,
        idx: str | None = None,
        dimensions: Sequence[Any] | None = None,
    ) -> None:
        self.record(name, value, "count", self._with_defaults(dimensions), "counter")

    def add_time(
        self,
        name: str,
        value: float,
        idx: str | None = None,
        unit: str = "ms",
        dimensions: Sequence[Any] | None = None,
        metric_type: Any = MetricTypes.GAUGE,
    ) -> None:
        if unit not in TIME_UNITS:
            raise ValueError(f"the unit of a time metric must be one of {TIME_UNITS}, not {unit!r}")
        self.record(name, value, unit, self._with_defaults(dimensions), _kind(metric_type))

    def add_size(
        self,
        name: str,
        value: float,
        idx: str | None = None,
        unit: str = "MB",
        dimensions: Sequence[Any] | None = None,
        metric_type: Any = MetricTypes.GAUGE,
    ) -> None:
        if unit not in SIZE_UNITS:
            raise ValueError(f"the unit of a size metric must be one of {SIZE_UNITS}, not {unit!r}")
        self.record(name, value, unit, self._with_defaults(dimensions), _kind(metric_type))

    def add_percent(
        self,
        name: str,
        value: float,
        idx: str | None = None,
        dimensions: Sequence[Any] | None = None,
        metric_type: Any = MetricTypes.GAUGE,
    ) -> None:
        self.record(name, value, "percent", self._with_defaults(dimensions), _kind(metric_type))

    def add_error(self, name: str, value: float, dimensions: Sequence[Any] | None = None) -> None:
        self.record(name, value, "", self._with_defaults(dimensions, error=True), "counter")

    def add_metric_to_cache(
        self,
        metric_name: str,
        unit: str,
        dimension_names: Sequence[str] | None = None,
        metric_type: Any = MetricTypes.COUNTER,
    ) -> CachedMetric:
        kind = _kind(metric_type)
        metric = CachedMetric(self, metric_name, unit, dimension_names or [], kind)
        self._cache[(kind, metric_name)] = metric
        return metric

    def get_metric(self, metric_name: str, metric_type: Any = MetricTypes.COUNTER) -> CachedMetric:
        try:
            return self._cache[(_kind(metric_type), metric_name)]
        except KeyError:
            raise KeyError(
                f"no {_kind(metric_type)} metric {metric_name!r}: declare it with "
                "add_metric_to_cache first"
            ) from None
