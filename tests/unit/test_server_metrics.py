"""The runtime's Prometheus text: TorchServe's exact names, cumulative buckets, clean removal."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import pytest
import yaml
from marfleet.runtime.host_metrics import HostSampler
from marfleet.runtime.metrics import Family, Registry, RuntimeMetrics


def samples(text: str) -> dict[str, float]:
    result = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            result[name] = float(value)
    return result


def test_torchserve_counters_keep_their_names() -> None:
    metrics = RuntimeMetrics(variant="canary", hostname="pod-1")
    model = metrics.for_model("resnet", "2.0", queue_depth=lambda: 3)
    model.request_received()
    model.request_answered(200, 0.004)
    metrics.count_status(200)
    metrics.count_status(503)
    text = metrics.registry.render().decode()
    values = samples(text)
    ts = 'model_name="resnet",model_version="2.0",hostname="pod-1"'
    assert values[f"ts_inference_requests_total{{{ts}}}"] == 1
    assert values[f"ts_inference_latency_microseconds{{{ts}}}"] == pytest.approx(4000)
    assert values['Requests2XX{Level="Host",Hostname="pod-1"}'] == 1
    assert values['Requests5XX{Level="Host",Hostname="pod-1"}'] == 1
    labels = 'model="resnet",version="2.0",variant="canary"'
    assert values[f'marfleet_requests_total{{{labels},code="200"}}'] == 1
    assert values[f"marfleet_inflight_requests{{{labels}}}"] == 0
    assert values[f"marfleet_queue_depth{{{labels}}}"] == 3  # read when rendered
    assert "# TYPE ts_inference_latency_microseconds counter" in text


def test_histogram_buckets_are_cumulative() -> None:
    registry = Registry()
    family = registry.add(Family("h", "help", "histogram", ("m",), buckets=(1, 5)))
    for value in (0.5, 2, 2, 10):
        family.histogram("x").observe(value)
    values = samples(registry.render().decode())
    assert values['h_bucket{m="x",le="1.0"}'] == 1
    assert values['h_bucket{m="x",le="5.0"}'] == 3
    assert values['h_bucket{m="x",le="+Inf"}'] == 4
    assert values['h_count{m="x"}'] == 4 and values['h_sum{m="x"}'] == 14.5


def test_label_values_are_escaped() -> None:
    registry = Registry()
    registry.add(Family("c", "help", "counter", ("m",))).labels('a"b\\c\nd').inc()
    assert 'c{m="a\\"b\\\\c\\nd"} 1.0' in registry.render().decode()


def test_a_name_cannot_change_its_type_or_labels() -> None:
    registry = Registry()
    registry.add(Family("x", "help", "counter", ("a",)))
    with pytest.raises(ValueError, match="already registered"):
        registry.add(Family("x", "help", "gauge", ("a",)))


def test_handler_metrics_become_ts_custom_series() -> None:
    metrics = RuntimeMetrics(variant="", hostname="h")
    model = metrics.for_model("m", "1.0", queue_depth=lambda: 0)
    model.handler_metrics(
        [("Rows Seen", 3, "count", {"Level": "Model"}, "counter"), ("Temp", 7, "C", {}, "gauge")]
    )
    values = samples(metrics.registry.render().decode())
    assert values['ts_custom_Rows_Seen{model="m",Level="Model"}'] == 3
    assert values['ts_custom_Temp{model="m"}'] == 7


def test_forgetting_a_model_removes_its_series() -> None:
    metrics = RuntimeMetrics(variant="", hostname="h")
    kept = metrics.for_model("a", "1.0", queue_depth=lambda: 0)
    gone = metrics.for_model("b", "1.0", queue_depth=lambda: 0)
    kept.request_received()
    gone.request_received()
    metrics.forget_model("b", "1.0")
    text = metrics.registry.render().decode()
    assert 'model="a"' in text and 'model="b"' not in text and 'model_name="b"' not in text


def test_a_version_that_failed_to_load_keeps_its_failure_count() -> None:
    metrics = RuntimeMetrics(variant="", hostname="h")
    broken = metrics.for_model("b", "1.0", queue_depth=lambda: 0)
    broken.request_received()
    metrics.model_load_failed("b", "1.0")
    metrics.forget_model("b", "1.0", keep_load_failures=True)
    values = samples(metrics.registry.render().decode())
    assert values['marfleet_model_load_failures_total{model="b",version="1.0",variant=""}'] == 1
    assert not [key for key in values if 'model="b"' in key and "load_failures" not in key]


def torchserve_default_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    """name -> (type, label names) from TorchServe 0.12's own metrics.yaml (GPU ones aside),
    the model metrics with the `Hostname` TorchServe's backend adds."""
    document = yaml.safe_load(files("ts").joinpath("configs/metrics.yaml").read_text())
    wanted = {}
    for section, extra in (("ts_metrics", ()), ("model_metrics", ("Hostname",))):
        for kind, metrics in document[section].items():
            for metric in metrics:
                if not metric["name"].startswith("GPU"):
                    wanted[metric["name"]] = (kind, (*metric["dimensions"], *extra))
    return wanted


def test_torchserves_default_metrics_have_its_names_types_and_labels() -> None:
    metrics = RuntimeMetrics(variant="", hostname="h", host=HostSampler(Path.cwd()))
    model = metrics.for_model("m", "1.0", queue_depth=lambda: 0)
    model.handler_metrics([("HandlerTime", 4.5, "ms", {}, "gauge")])
    model.model_loaded(1.25, "9000")
    ours = {
        family.name: (family.kind, tuple(family.labelnames))
        for family in metrics.registry.families()
    }
    wanted = torchserve_default_metrics()
    assert len(wanted) == 18
    assert {name: ours.get(name) for name in wanted} == wanted
    values = samples(metrics.registry.render().decode())
    assert values['HandlerTime{ModelName="m",Level="Model",Hostname="h"}'] == 4.5
    assert values['WorkerLoadTime{WorkerName="W-9000-m_1.0",Level="Host",Hostname="h"}'] == 1250
    assert 0 <= values['CPUUtilization{Level="Host",Hostname="h"}'] <= 100
    assert values['MemoryUsed{Level="Host",Hostname="h"}'] > 0
    assert 0 < values['DiskUtilization{Level="Host",Hostname="h"}'] <= 100


def test_host_metrics_are_torchserves_numbers(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "stat").write_text("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3\n")
    (proc / "meminfo").write_text("MemTotal: 4194304 kB\nMemFree: 1 kB\nMemAvailable: 1048576 kB\n")
    sampler = HostSampler(tmp_path, proc=proc)
    first = sampler.sample()
    assert first["CPUUtilization"] == 20.0  # 200 busy of 1000 ticks since boot
    assert (first["MemoryUsed"], first["MemoryAvailable"], first["MemoryUtilization"]) == (
        3072,
        1024,
        75.0,
    )
    (proc / "stat").write_text("cpu  190 0 110 800 100 0 0 0 0 0\n")
    assert sampler.sample()["CPUUtilization"] == 50.0  # 100 busy of 200 since the last scrape
