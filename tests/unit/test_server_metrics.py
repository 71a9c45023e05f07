"""The runtime's Prometheus text: TorchServe's exact names, cumulative buckets, clean removal."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path

import pytest
import yaml
from marfleet.runtime.host_metrics import GpuSampler, HostSampler
from marfleet.runtime.metrics import (
    MAX_HANDLER_METRICS,
    MAX_HANDLER_SERIES,
    WORKER_SERIES_KEPT,
    Family,
    Registry,
    RuntimeMetrics,
)
from marfleet.runtime.metrics_config import (
    DEFAULT_METRICS_YAML,
    MAX_METRICS_CONFIG_BYTES,
    MetricsConfigError,
    default_metrics_config,
    load_metrics_config,
    parse_metrics_config,
)


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


def test_names_keep_only_those_samples_and_their_families_heads() -> None:
    registry = Registry()
    family = registry.add(Family("h", "help h", "histogram", ("m",), buckets=(1,)))
    family.histogram("x").observe(0.5)
    registry.add(Family("c", "help c", "counter", ("m",))).labels("x").inc()
    registry.add(Family("g", "help g", "gauge", ("m",))).labels("x").set(2)
    text = registry.render(frozenset({"h_count", "c"})).decode()
    assert text.splitlines() == [
        "# HELP h help h",
        "# TYPE h histogram",
        'h_count{m="x"} 1',
        "# HELP c help c",
        "# TYPE c counter",
        'c{m="x"} 1.0',
    ]
    assert registry.render(frozenset({"h"})) == b""  # a histogram's samples have suffixes


def test_label_values_are_escaped() -> None:
    registry = Registry()
    registry.add(Family("c", "help", "counter", ("m",))).labels('a"b\\c\nd').inc()
    assert 'c{m="a\\"b\\\\c\\nd"} 1.0' in registry.render().decode()


def test_a_name_cannot_change_its_type_or_labels() -> None:
    registry = Registry()
    registry.add(Family("x", "help", "counter", ("a",)))
    with pytest.raises(ValueError, match="already registered"):
        registry.add(Family("x", "help", "gauge", ("a",)))


MODEL = {"ModelName": "m", "Level": "Model"}
HANDLER_RECORDS: list[tuple[object, ...]] = [
    ("Rows", 3, "count", {"Kind": "a", **MODEL}, "counter"),
    ("Rows", 2, "count", {"Kind": "a", **MODEL}, "counter"),
    ("Temp", 7, "C", MODEL, "gauge"),
    ("Bad Name", 1, "count", MODEL, "counter"),
]


def test_handler_metrics_metrics_config_does_not_declare_are_not_exported() -> None:
    metrics = RuntimeMetrics(variant="", hostname="h")
    metrics.for_model("m", "1.0", queue_depth=lambda: 0).handler_metrics(HANDLER_RECORDS)
    text = metrics.registry.render().decode()
    assert "Rows" not in text and "Temp" not in text


def test_declared_handler_metrics_take_the_declared_type_and_dimensions() -> None:
    config = parse_metrics_config(
        "model_metrics:\n"
        "  histogram:\n"
        "    - {name: Rows, unit: count, dimensions: [Kind, ModelName, Level]}\n"
        "  gauge:\n"
        "    - {name: Temp, unit: C, dimensions: [Kind]}\n",
        "test",
    )
    metrics = RuntimeMetrics(variant="", hostname="h", config=config)
    metrics.for_model("m", "1.0", queue_depth=lambda: 0).handler_metrics(HANDLER_RECORDS)
    text = metrics.registry.render().decode()
    values = samples(text)
    assert "# TYPE Rows histogram" in text
    assert values['Rows_count{Kind="a",ModelName="m",Level="Model",Hostname="h"}'] == 2
    assert values['Rows_sum{Kind="a",ModelName="m",Level="Model",Hostname="h"}'] == 5
    assert "Temp{" not in text  # recorded with other dimensions than declared: dropped
    assert "# TYPE Temp gauge" in text  # declared, so described, as TorchServe does


def test_auto_detected_handler_metrics_keep_their_own_type_and_dimensions() -> None:
    config = default_metrics_config(auto_detect=True)
    metrics = RuntimeMetrics(variant="", hostname="h", config=config)
    metrics.for_model("m", "1.0", queue_depth=lambda: 0).handler_metrics(HANDLER_RECORDS)
    text = metrics.registry.render().decode()
    values = samples(text)
    assert values['Rows{Kind="a",ModelName="m",Level="Model",Hostname="h"}'] == 5
    assert values['Temp{ModelName="m",Level="Model",Hostname="h"}'] == 7
    assert "Bad Name" not in text  # not a Prometheus name


def test_a_metrics_config_picks_torchserves_metrics_and_their_types() -> None:
    config = parse_metrics_config(
        "ts_metrics:\n"
        "  histogram:\n"
        "    - {name: ts_inference_latency_microseconds, unit: us, dimensions: [model_name]}\n"
        "  counter:\n"
        "    - {name: Requests2XX, unit: Count, dimensions: [Hostname, Level]}\n",
        "test",
    )
    metrics = RuntimeMetrics(variant="", hostname="h", config=config)
    model = metrics.for_model("m", "1.0", queue_depth=lambda: 0)
    model.request_received()
    model.request_answered(200, 0.004)
    metrics.count_status(200)
    metrics.count_status(500)
    text = metrics.registry.render().decode()
    values = samples(text)
    assert values['ts_inference_latency_microseconds_count{model_name="m"}'] == 1
    assert values['Requests2XX{Hostname="h",Level="Host"}'] == 1
    assert "Requests5XX" not in text and "ts_inference_requests_total" not in text
    assert "QueueTime" not in text and "HandlerTime" not in text
    assert 'marfleet_requests_total{model="m",version="1.0",variant="",code="200"} 1.0' in text


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("ts_metrics: [1]", "ts_metrics must map types to lists"),
        ("ts_metrics:\n  summary: []", "type 'summary' is not one of counter"),
        ("model_metrics:\n  gauge:\n    - {unit: ms}", "needs a name"),
        ("model_metrics:\n  gauge:\n    - {name: 'a b'}", "is not a Prometheus metric name"),
        ("model_metrics:\n  gauge:\n    - {name: A, dimensions: ['x y']}", "label name"),
        ("ts_metrics:\n  gauge:\n    - {name: QueueTime, dimensions: [ModelName]}", "use some of"),
        ("ts_metrics: {", "not valid YAML"),
    ],
)
def test_a_wrong_metrics_config_names_the_problem(text: str, fragment: str) -> None:
    with pytest.raises(MetricsConfigError, match=re.escape(fragment)):
        parse_metrics_config(text, "metrics.yaml")


def test_the_default_is_torchserves_own_metrics_yaml() -> None:
    theirs = yaml.safe_load(files("ts").joinpath("configs/metrics.yaml").read_text())
    assert yaml.safe_load(DEFAULT_METRICS_YAML) == theirs


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
    """name -> (type, label names) from TorchServe 0.12's own metrics.yaml, the model metrics
    with the `Hostname` TorchServe's backend adds."""
    document = yaml.safe_load(files("ts").joinpath("configs/metrics.yaml").read_text())
    wanted = {}
    for section, extra in (("ts_metrics", ()), ("model_metrics", ("Hostname",))):
        for kind, metrics in document[section].items():
            for metric in metrics:
                wanted[metric["name"]] = (kind, (*metric["dimensions"], *extra))
    return wanted


def test_torchserves_default_metrics_have_its_names_types_and_labels() -> None:
    metrics = RuntimeMetrics(variant="", hostname="h", host=HostSampler(Path.cwd()))
    model = metrics.for_model("m", "1.0", queue_depth=lambda: 0)
    model.handler_metrics(
        [("HandlerTime", 4.5, "ms", {"ModelName": "m", "Level": "Model"}, "gauge")]
    )
    model.model_loaded(1.25, "9000")
    ours = {
        family.name: (family.kind, tuple(family.labelnames))
        for family in metrics.registry.families()
    }
    wanted = torchserve_default_metrics()
    assert len(wanted) == 21
    assert {name: ours.get(name) for name in wanted} == wanted
    values = samples(metrics.registry.render().decode())
    assert values['HandlerTime{ModelName="m",Level="Model",Hostname="h"}'] == 4.5
    assert values['WorkerLoadTime{WorkerName="W-9000-m_1.0",Level="Host",Hostname="h"}'] == 1250
    assert 0 <= values['CPUUtilization{Level="Host",Hostname="h"}'] <= 100
    assert values['MemoryUsed{Level="Host",Hostname="h"}'] > 0
    assert 0 < values['DiskUtilization{Level="Host",Hostname="h"}'] <= 100


def test_worker_load_series_are_bounded_and_go_with_their_model() -> None:
    metrics = RuntimeMetrics(variant="", hostname="h", host=HostSampler(Path.cwd()))
    model = metrics.for_model("m", "1.0", queue_depth=lambda: 0)
    other = metrics.for_model("n", "1.0", queue_depth=lambda: 0)
    other.model_loaded(1.0, "1")
    for worker in range(9000, 9000 + WORKER_SERIES_KEPT + 10):  # a worker that keeps crashing
        model.model_loaded(1.0, str(worker))

    def loaded() -> list[str]:
        text = metrics.registry.render().decode()
        return [name for name in samples(text) if name.startswith("WorkerLoadTime{")]

    names = loaded()
    assert len(names) == WORKER_SERIES_KEPT + 1
    assert f'WorkerName="W-{9000 + WORKER_SERIES_KEPT + 9}-m_1.0"' in "".join(names)
    assert 'WorkerName="W-9000-m_1.0"' not in "".join(names)  # the oldest went first
    metrics.forget_model("m", "1.0")  # unregistered: its workers' series go with it
    assert [name for name in loaded() if "-m_1.0" in name] == []
    assert len(loaded()) == 1  # model n's stays


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


def test_serve_reads_metrics_config_and_refuses_a_wrong_one(tmp_path: Path) -> None:
    from marfleet.runtime.config import ConfigError
    from marfleet.runtime.serve_cli import build_parser, load_config

    metrics_yaml = tmp_path / "metrics.yaml"
    metrics_yaml.write_text("model_metrics:\n  counter:\n    - {name: Rows, dimensions: [Kind]}\n")
    properties = tmp_path / "config.properties"
    properties.write_text(f"metrics_config={metrics_yaml}\nmodel_metrics_auto_detect=true\n")
    args = build_parser().parse_args(
        ["--model-store", str(tmp_path), "--ts-config", str(properties)]
    )
    config = load_config(args, {})
    assert config.metrics is not None and config.metrics.auto_detect
    assert config.metrics.model["Rows"].dimensions == ("Kind",)
    assert "Requests2XX" not in config.metrics.frontend
    metrics_yaml.write_text("ts_metrics:\n  gauge:\n    - {name: QueueTime, dimensions: [Pod]}\n")
    with pytest.raises(ConfigError, match=r"QueueTime dimensions \['Pod'\] are not ones"):
        load_config(args, {})
    metrics_yaml.unlink()
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(args, {})


def test_gpu_metrics_per_device_as_torchserve_names_them() -> None:
    # This machine has no GPU: nvidia-smi's answer is given, in its documented CSV layout
    # (two GPUs, the second without utilization support), and must be read as TorchServe does.
    def nvidia_smi(command: Sequence[str]) -> str:
        assert command[0] == "nvidia-smi" and "--format=csv,noheader,nounits" in command
        return "0, 35, 2048, 81559\n1, [N/A], 40779, 81559\n"

    metrics = RuntimeMetrics(variant="", hostname="h")
    metrics.record_gpus(GpuSampler(nvidia_smi).sample())
    values = samples(metrics.registry.render().decode())
    device = 'Level="Host",DeviceId="{}",Hostname="h"'
    assert values[f"GPUUtilization{{{device.format(0)}}}"] == 35
    assert values[f"GPUMemoryUsed{{{device.format(0)}}}"] == 2048
    assert values[f"GPUMemoryUtilization{{{device.format(1)}}}"] == 50.0
    assert f"GPUUtilization{{{device.format(1)}}}" not in values


def test_a_failing_nvidia_smi_gives_no_gpu_samples() -> None:
    def failing(command: Sequence[str]) -> str:
        raise subprocess.TimeoutExpired(command, 5)

    assert GpuSampler(failing).sample() == {}


def test_a_metrics_config_over_its_size_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "metrics.yaml"
    path.write_bytes(b"#" * (MAX_METRICS_CONFIG_BYTES + 1))
    with pytest.raises(MetricsConfigError, match="is larger than 1048576 bytes"):
        load_metrics_config(path)
    path.write_text("")
    assert load_metrics_config(path).frontend == {}  # an empty file declares nothing


def test_auto_detection_stops_at_its_limit_of_metric_names() -> None:
    metrics = RuntimeMetrics(
        variant="", hostname="h", config=default_metrics_config(auto_detect=True)
    )
    model = metrics.for_model("m", "1.0", queue_depth=lambda: 0)
    model.handler_metrics([(f"M{i}", 1, "count", MODEL, "counter") for i in range(300)])
    text = metrics.registry.render().decode()
    declared = len(default_metrics_config().model)  # HandlerTime, PredictionTime
    assert f"# TYPE M{MAX_HANDLER_METRICS - declared - 1} counter" in text
    assert f"# TYPE M{MAX_HANDLER_METRICS - declared} counter" not in text


def test_a_handler_metric_stops_taking_new_label_sets_at_its_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = RuntimeMetrics(
        variant="", hostname="h", config=default_metrics_config(auto_detect=True)
    )
    model = metrics.for_model("m", "1.0", queue_depth=lambda: 0)
    per_request: list[tuple[object, ...]] = [
        ("Seen", 1, "count", {**MODEL, "RequestId": str(i)}, "counter")
        for i in range(MAX_HANDLER_SERIES + 50)
    ]
    model.handler_metrics(per_request)
    model.handler_metrics(per_request[:1])  # a label set it already has still counts
    values = samples(metrics.registry.render().decode())
    seen = {name: value for name, value in values.items() if name.startswith("Seen{")}
    assert len(seen) == MAX_HANDLER_SERIES
    assert seen[next(n for n in seen if 'RequestId="0"' in n)] == 2
    assert values['marfleet_handler_metric_values_dropped_total{metric="Seen"}'] == 50
    warned = [r for r in caplog.records if "as many label sets" in r.getMessage()]
    assert len(warned) == 1
