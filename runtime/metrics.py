"""The runtime's Prometheus metrics (names are the contract in docs/metrics.md).

A small registry of its own rather than prometheus_client, for two reasons: TorchServe's names
must be exported exactly (`ts_inference_latency_microseconds` and `Requests2XX` are counters
without a `_total` suffix, which prometheus_client always appends), and the frontend updates
several series per request on a single event loop, where plain attribute arithmetic on
pre-bound children is several times cheaper than prometheus_client's locked label lookups.
Rendering follows the Prometheus text format 0.0.4.

TorchServe's metrics are the ones its `metrics_config` declares (metrics_config.py), with the
declared type and labels; each is updated through a `Series`, which adds, sets or observes as
that type says and does nothing for a metric the config leaves out, so the code that measures
never needs to know. marfleet's own `marfleet_*` metrics are always there.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence

from marfleet.runtime.host_metrics import HostSampler
from marfleet.runtime.metrics_config import (
    LABEL_NAME,
    METRIC_NAME,
    MetricsConfig,
    MetricSpec,
    default_metrics_config,
)
from marfleet.runtime.workers.pool import Job
from marfleet.runtime.workers.process import MetricRecord

log = logging.getLogger("marfleet.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LOAD_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# auto-detected handler metric names a server takes on at most (each is a family kept forever)
MAX_HANDLER_METRICS = 256
MAX_HANDLER_SERIES = 1000
"""Label sets one handler metric takes on at most: a handler that puts a request id or a user
in a dimension would otherwise grow the server's memory and every scrape without bound."""
WORKER_SERIES_KEPT = 64
"""WorkerLoadTime series kept per model version: the latest worker starts (names are unique)."""
# TorchServe's histograms: the Prometheus Java client's default buckets
TS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)


class Value:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def set(self, value: float) -> None:
        self.value = value

    def samples(self, name: str, labels: str) -> Iterable[str]:
        yield f"{name}{labels} {_number(self.value)}"


class Histogram:
    __slots__ = ("buckets", "count", "counts", "sum")

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def samples(self, name: str, labels: str) -> Iterable[str]:
        prefix = labels[:-1] + "," if labels else "{"
        running = 0
        for bound, count in zip((*self.buckets, math.inf), self.counts, strict=True):
            running += count
            yield f'{name}_bucket{prefix}le="{_number(bound)}"}} {running}'
        yield f"{name}_sum{labels} {_number(self.sum)}"
        yield f"{name}_count{labels} {self.count}"


class Family:
    """One metric name with its label names; `labels(...)` returns a cached child."""

    def __init__(
        self,
        name: str,
        help_text: str,
        kind: str,
        labelnames: Sequence[str],
        buckets: Sequence[float] = (),
    ) -> None:
        self.name = name
        self.help = help_text
        self.kind = kind
        self.labelnames = tuple(labelnames)
        self._buckets = buckets
        self._children: dict[tuple[str, ...], Value | Histogram] = {}

    def labels(self, *values: str) -> Value:
        child = self._child(values)
        assert isinstance(child, Value)
        return child

    def histogram(self, *values: str) -> Histogram:
        child = self._child(values)
        assert isinstance(child, Histogram)
        return child

    def __len__(self) -> int:
        return len(self._children)

    def __contains__(self, values: tuple[str, ...]) -> bool:
        return values in self._children

    def remove(self, predicate: Callable[[dict[str, str]], bool]) -> None:
        for key in [
            k for k in self._children if predicate(dict(zip(self.labelnames, k, strict=True)))
        ]:
            del self._children[key]

    def _child(self, values: tuple[str, ...]) -> Value | Histogram:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
            child = Histogram(self._buckets) if self.kind == "histogram" else Value()
            self._children[values] = child
        return child

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        for values, child in self._children.items():
            labels = ",".join(
                f'{n}="{_escape(v)}"' for n, v in zip(self.labelnames, values, strict=True)
            )
            yield from child.samples(self.name, "{" + labels + "}" if labels else "")


class Registry:
    def __init__(self) -> None:
        self._families: dict[str, Family] = {}
        self._refreshers: list[Callable[[], None]] = []

    def add(self, family: Family) -> Family:
        existing = self._families.get(family.name)
        if existing is not None:
            if (existing.kind, existing.labelnames) != (family.kind, family.labelnames):
                raise ValueError(
                    f"metric {family.name} is already registered as {existing.kind} "
                    f"with labels {existing.labelnames}"
                )
            return existing
        self._families[family.name] = family
        return family

    def on_render(self, refresh: Callable[[], None]) -> None:
        self._refreshers.append(refresh)

    def families(self) -> list[Family]:
        return list(self._families.values())

    def render(self, names: frozenset[str] | None = None) -> bytes:
        """Prometheus text of every family; with `names` (TorchServe's `?name[]=` filter),
        only the samples of those names (`QueueTime_bucket`, `Requests2XX`, ...) and the
        HELP and TYPE of their families."""
        for refresh in self._refreshers:
            refresh()
        lines: list[str] = []
        for family in self._families.values():
            rendered = list(family.render())
            if names is None:
                lines.extend(rendered)
                continue
            kept = [line for line in rendered[2:] if _sample_name(line) in names]
            if kept:
                lines += rendered[:2] + kept
        return ("\n".join(lines) + "\n").encode() if lines else b""


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    return repr(float(value)) if value != int(value) else f"{int(value)}.0"


def _sample_name(line: str) -> str:
    return line.split("{", 1)[0].split(" ", 1)[0]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


MODEL_LABELS = ("model", "version", "variant")


def _ignore(value: float) -> None:
    """The update of a metric metrics_config leaves out."""


class Series:
    """One series of a TorchServe metric, whatever type metrics_config gave it: a counter adds
    the value, a gauge takes it, a histogram observes it (TorchServe's `addOrUpdate`)."""

    __slots__ = ("record",)

    def __init__(self, family: Family | None, labels: dict[str, str]) -> None:
        self.record: Callable[[float], None] = _ignore
        if family is None:
            return
        values = tuple(labels.get(name, "") for name in family.labelnames)
        if family.kind == "histogram":
            self.record = family.histogram(*values).observe
        elif family.kind == "gauge":
            self.record = family.labels(*values).set
        else:
            self.record = family.labels(*values).inc


class RuntimeMetrics:
    """Every series `marfleet serve` exports; per-model views come from `for_model`."""

    def __init__(
        self,
        *,
        variant: str,
        hostname: str,
        host: HostSampler | None = None,
        config: MetricsConfig | None = None,
    ) -> None:
        self.variant = variant
        self.hostname = hostname
        self.config = config = config if config is not None else default_metrics_config()
        self.registry = registry = Registry()
        self._dropped: set[str] = set()  # handler metrics not declared, logged once
        self._full: set[str] = set()  # handler metrics at MAX_HANDLER_SERIES, logged once
        self._queue_depths: dict[tuple[str, str], tuple[Value, Callable[[], int]]] = {}
        self._host = host
        registry.on_render(self._refresh_queue_depths)
        registry.on_render(self._refresh_host)

        def family(
            name: str,
            help_text: str,
            kind: str,
            labels: Sequence[str],
            buckets: Sequence[float] = (),
        ) -> Family:
            return registry.add(Family(name, help_text, kind, labels, buckets))

        self._ts: dict[str, Family] = {
            spec.name: self._ts_family(spec, spec.dimensions) for spec in config.frontend.values()
        }
        self._model: dict[str, Family] = {
            spec.name: self._ts_family(spec, _with_hostname(spec.dimensions))
            for spec in config.model.values()
        }
        self.by_class = {
            cls: self.ts_series(f"Requests{cls}XX", Level="Host", Hostname=hostname)
            for cls in (2, 4, 5)
        }
        self.requests = family(
            "marfleet_requests_total",
            "Inference requests answered.",
            "counter",
            (*MODEL_LABELS, "code"),
        )
        self.duration = family(
            "marfleet_request_duration_seconds",
            "Time from request received to response sent.",
            "histogram",
            MODEL_LABELS,
            LATENCY_BUCKETS,
        )
        self.queue_time = family(
            "marfleet_queue_duration_seconds",
            "Time a request waited for a worker.",
            "histogram",
            MODEL_LABELS,
            LATENCY_BUCKETS,
        )
        self.batch_size = family(
            "marfleet_batch_size",
            "Size of the batches handed to workers.",
            "histogram",
            MODEL_LABELS,
            BATCH_BUCKETS,
        )
        self.inflight = family(
            "marfleet_inflight_requests",
            "Requests received and not yet answered.",
            "gauge",
            MODEL_LABELS,
        )
        self.queue_depth = family(
            "marfleet_queue_depth", "Requests queued for a worker.", "gauge", MODEL_LABELS
        )
        self.rejections = family(
            "marfleet_queue_rejections_total",
            "Requests refused with 503 because the queue was full.",
            "counter",
            MODEL_LABELS,
        )
        self.workers = family(
            "marfleet_workers",
            "Worker processes by device and state.",
            "gauge",
            (*MODEL_LABELS, "device", "state"),
        )
        self.restarts = family(
            "marfleet_worker_restarts_total",
            "Worker processes restarted.",
            "counter",
            (*MODEL_LABELS, "reason"),
        )
        self.handler_errors = family(
            "marfleet_handler_errors_total",
            "Batches the handler failed.",
            "counter",
            (*MODEL_LABELS, "code"),
        )
        self.load_time = family(
            "marfleet_model_load_seconds",
            "Time to load a model into a worker.",
            "histogram",
            MODEL_LABELS,
            LOAD_BUCKETS,
        )
        self.load_failures = family(
            "marfleet_model_load_failures_total",
            "Models or workers that failed to load.",
            "counter",
            MODEL_LABELS,
        )
        self.series_dropped = family(
            "marfleet_handler_metric_values_dropped_total",
            f"Handler metric values not exported: their metric had {MAX_HANDLER_SERIES} "
            "label sets already.",
            "counter",
            ("metric",),
        )

    def _ts_family(self, spec: MetricSpec, labelnames: Sequence[str]) -> Family:
        help_text = f"Torchserve prometheus {spec.kind} metric with unit: {spec.unit}"
        return self.registry.add(Family(spec.name, help_text, spec.kind, labelnames, TS_BUCKETS))

    def ts_series(self, name: str, **labels: str) -> Series:
        """The series of TorchServe's frontend metric `name` with these label values."""
        return Series(self._ts.get(name), labels)

    def count_status(self, status: int) -> None:
        child = self.by_class.get(status // 100)
        if child is not None:
            child.record(1)

    def for_model(self, name: str, version: str, queue_depth: Callable[[], int]) -> ModelMetrics:
        metrics = ModelMetrics(self, name, version)
        self._queue_depths[(name, version)] = (metrics.queue_depth, queue_depth)
        return metrics

    def forget_model(self, name: str, version: str, *, keep_load_failures: bool = False) -> None:
        """Drop every series of an unregistered model version. A version that failed to load
        keeps its load-failure count, so the alert on it can see the failure."""
        self._queue_depths.pop((name, version), None)

        workers = f"-{name}_{version}"  # TorchServe's worker names end so (WorkerLoadTime)

        def belongs(labels: dict[str, str]) -> bool:
            return (
                labels.get("model", labels.get("model_name")),
                labels.get("version", labels.get("model_version")),
            ) == (name, version) or labels.get("WorkerName", "").endswith(workers)

        for family in self.registry.families():
            if not (keep_load_failures and family is self.load_failures):
                family.remove(belongs)

    def forget_worker(self, worker: str) -> None:
        """Drop the series of one worker name (WorkerLoadTime's), e.g. a worker long replaced."""
        family = self._ts.get("WorkerLoadTime")
        if family is not None:
            family.remove(lambda labels: labels.get("WorkerName") == worker)

    def host_series(self, name: str) -> Series:
        return self.ts_series(name, Level="Host", Hostname=self.hostname)

    def _refresh_host(self) -> None:
        if self._host is None:
            return
        for name, value in self._host.sample().items():
            self.host_series(name).record(value)

    def record_gpus(self, devices: dict[str, dict[str, float]]) -> None:
        """TorchServe's GPU metrics of each device index (host_metrics.GpuSampler)."""
        for device, values in devices.items():
            for name, value in values.items():
                labels = {"Level": "Host", "DeviceId": device, "Hostname": self.hostname}
                self.ts_series(name, **labels).record(value)

    def _refresh_queue_depths(self) -> None:
        for gauge, depth in self._queue_depths.values():
            gauge.set(depth())

    def model_load_failed(self, name: str, version: str) -> None:
        self.load_failures.labels(name, version, self.variant).inc()

    def model_metric(
        self, name: str, kind: str, unit: str, dimensions: dict[str, str]
    ) -> Series | None:
        """The series of a worker's metric (the handler's own, HandlerTime, PredictionTime)
        with these dimensions, as TorchServe exports it: declared in metrics_config's
        model_metrics (the declared type and dimensions win), or auto-detected when
        model_metrics_auto_detect is on; None (and logged once) when it is not exported."""
        family = self._model.get(name)
        if (
            family is None
            and self.config.auto_detect
            and _nameable(name, dimensions)
            and len(self._model) < MAX_HANDLER_METRICS
        ):
            spec = MetricSpec(name, kind, unit, tuple(dimensions))
            try:
                family = self._model[name] = self._ts_family(spec, _with_hostname(spec.dimensions))
            except ValueError:  # a name marfleet already uses
                family = None
        labels = {**dimensions, "Hostname": self.hostname}
        if family is None or set(family.labelnames) != set(labels):
            if name not in self._dropped:
                self._dropped.add(name)
                log.warning(
                    "handler metric not exported: declare it in metrics_config's model_metrics "
                    "with these dimensions, or set model_metrics_auto_detect=true",
                    extra={"metric": name, "dimensions": sorted(dimensions)},
                )
            return None
        values = tuple(labels.get(label, "") for label in family.labelnames)
        if values not in family and len(family) >= MAX_HANDLER_SERIES:
            self.series_dropped.labels(name).inc()
            if name not in self._full:
                self._full.add(name)
                log.warning(
                    "handler metric has as many label sets as it may have: values with new "
                    "dimension values are not exported (dimension values should come from a "
                    "small set: not request ids, users or inputs)",
                    extra={"metric": name, "label_sets": MAX_HANDLER_SERIES},
                )
            return None
        return Series(family, labels)


class ModelMetrics:
    """The series of one model version, bound once; also the worker pool's observer."""

    def __init__(self, parent: RuntimeMetrics, name: str, version: str) -> None:
        self._parent = parent
        self.name = name
        labels = (name, version, parent.variant)
        self._labels = labels
        ts = {"model_name": name, "model_version": version, "hostname": parent.hostname}
        self.ts_requests = parent.ts_series("ts_inference_requests_total", **ts)
        self.ts_latency = parent.ts_series("ts_inference_latency_microseconds", **ts)
        self.ts_queue = parent.ts_series("ts_queue_latency_microseconds", **ts)
        self.duration = parent.duration.histogram(*labels)
        self.queue_time = parent.queue_time.histogram(*labels)
        self.batch_size = parent.batch_size.histogram(*labels)
        self.inflight = parent.inflight.labels(*labels)
        self.queue_depth = parent.queue_depth.labels(*labels)
        self.rejections = parent.rejections.labels(*labels)
        self.load_time = parent.load_time.histogram(*labels)
        self._by_code: dict[int, Value] = {}
        self._version = version
        self._queue_gauge = parent.host_series("QueueTime")
        self._thread_gauge = parent.host_series("WorkerThreadTime")
        self._last_ms = {"HandlerTime": 0.0, "PredictionTime": 0.0}  # for WorkerThreadTime
        self._workers_loaded: deque[str] = deque()  # WorkerLoadTime's names, oldest first

    def request_received(self) -> None:
        self.ts_requests.record(1)
        self.inflight.inc()

    def request_answered(self, status: int, seconds: float) -> None:
        self.inflight.inc(-1)
        child = self._by_code.get(status)
        if child is None:
            child = self._by_code[status] = self._parent.requests.labels(*self._labels, str(status))
        child.inc()
        self.duration.observe(seconds)
        self.ts_latency.record(seconds * 1e6)

    # PoolObserver

    def worker_state(self, device: str, before: str | None, after: str | None) -> None:
        workers = self._parent.workers
        if before is not None:
            workers.labels(*self._labels, device, before).inc(-1)
        if after is not None:
            workers.labels(*self._labels, device, after).inc()

    def worker_restarted(self, reason: str) -> None:
        self._parent.restarts.labels(*self._labels, reason).inc()

    def model_loaded(self, seconds: float, worker_id: str) -> None:
        self.load_time.observe(seconds)
        worker = f"W-{worker_id}-{self.name}_{self._version}"  # TorchServe's worker name
        parent = self._parent
        series = parent.ts_series(
            "WorkerLoadTime", WorkerName=worker, Level="Host", Hostname=parent.hostname
        )
        series.record(round(seconds * 1000))
        # Each worker start has a name of its own: keep the latest few, so a crash-looping
        # worker cannot grow the metrics page without bound.
        self._workers_loaded.append(worker)
        if len(self._workers_loaded) > WORKER_SERIES_KEPT:
            oldest = self._workers_loaded.popleft()
            parent.forget_worker(oldest)

    def model_load_failed(self) -> None:
        self._parent.load_failures.labels(*self._labels).inc()

    def batch_started(self, jobs: Sequence[Job], now: float) -> None:
        self.batch_size.observe(len(jobs))
        for job in jobs:
            waited = now - job.enqueued_at
            self.queue_time.observe(waited)
            self.ts_queue.record(waited * 1e6)
            self._queue_gauge.record(round(waited * 1000))

    def batch_finished(self, seconds: float) -> None:
        """WorkerThreadTime: the batch's round trip to its worker less the handler's own time
        (TorchServe: time in the frontend's worker thread, backend excluded)."""
        handler_ms = self._last_ms["HandlerTime"] or self._last_ms["PredictionTime"]
        self._thread_gauge.record(max(0, round(seconds * 1000 - handler_ms)))

    def handler_failed(self, code: int) -> None:
        self._parent.handler_errors.labels(*self._labels, str(code)).inc()

    def handler_metrics(self, records: list[MetricRecord]) -> None:
        for name, value, unit, dimensions, kind in records:
            number = float(str(value))
            if name in self._last_ms:
                self._last_ms[str(name)] = number
            dims = (
                {str(k): str(v) for k, v in dimensions.items()}
                if isinstance(dimensions, dict)
                else {}
            )
            series = self._parent.model_metric(str(name), str(kind), str(unit), dims)
            if series is not None:
                series.record(number)


def _nameable(name: str, dimensions: dict[str, str]) -> bool:
    """Whether a handler's metric can be exported under its own name and dimensions."""
    return bool(METRIC_NAME.fullmatch(name)) and all(LABEL_NAME.fullmatch(d) for d in dimensions)


def _with_hostname(dimensions: Sequence[str]) -> tuple[str, ...]:
    """A worker metric's labels: its dimensions and the Hostname TorchServe's backend adds."""
    return tuple(dimensions) if "Hostname" in dimensions else (*dimensions, "Hostname")
