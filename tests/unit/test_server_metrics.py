"""The runtime's Prometheus text: TorchServe's exact names, cumulative buckets, clean removal."""

from __future__ import annotations

import pytest
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
    ts = 'model_name="resnet",model_version="2.0",Hostname="pod-1"'
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
