"""Context and context.metrics: TorchServe's names and signatures, recorded for the runtime."""

from __future__ import annotations

import pytest
from marfleet.runtime.handlers.context import Context, RequestProcessor
from marfleet.runtime.handlers.metrics import Dimension, HandlerMetric, HandlerMetrics, MetricTypes


def batch_context() -> Context:
    context = Context("resnet", "/models/resnet", {"model": {}}, 4, 1, "0.1.0", 933120000)
    context.request_ids = {0: "req-a", 1: "req-b"}
    context.request_processor = [
        RequestProcessor({"content-type": "image/png", "x-trace": "abc"}),
        RequestProcessor({"Content-Type": "text/plain"}),
    ]
    return context


def test_system_properties_as_torchserve_lays_them_out() -> None:
    context = batch_context()
    assert context.system_properties == {
        "model_dir": "/models/resnet",
        "gpu_id": 1,
        "batch_size": 4,
        "server_name": "MMS",
        "server_version": "0.1.0",
        "limit_max_image_pixels": 933120000,
    }
    assert context.model_yaml_config == {}
    assert context.get_request_id() == "req-a"
    assert context.get_request_id(1) == "req-b"


def test_request_headers_are_found_whatever_their_case() -> None:
    context = batch_context()
    assert context.get_request_header(0, "Content-Type") == "image/png"
    assert context.get_request_header(1, "content-type") == "text/plain"
    assert context.get_request_header(0, "X-TRACE") == "abc"
    assert context.get_request_header(0, "missing") is None
    assert context.get_all_request_header(0) == {"content-type": "image/png", "x-trace": "abc"}


def test_response_status_headers_and_content_type_per_request() -> None:
    context = batch_context()
    context.set_response_status(418, "teapot", idx=1)
    context.set_response_header(0, "X-Model", "resnet")
    context.set_response_content_type(0, "text/csv")
    assert context.get_response_status(0) == (200, None)
    assert context.get_response_status(1) == (418, "teapot")
    assert context.get_response_headers(0) == {"X-Model": "resnet", "content-type": "text/csv"}
    assert context.get_response_content_type(0) == "text/csv"
    context.set_all_response_status(503, "busy")
    assert [context.get_response_status(i)[0] for i in (0, 1)] == [503, 503]


def test_metric_helpers_record_name_value_unit_kind_and_dimensions() -> None:
    metrics = HandlerMetrics()
    dims = [Dimension("stage", "pre")]
    metrics.add_counter("Calls", 2, None, dims)
    metrics.add_time("Latency", 1.5, None, "s", dims)
    metrics.add_size("Bytes", 10, unit="kB")
    metrics.add_percent("Ratio", 50.0, metric_type=MetricTypes.HISTOGRAM)
    metrics.add_metric("Tokens", 7, "count", None, dims, MetricTypes.GAUGE)
    metrics.add_error("Failures", 1)
    error = {"Level": "Error"}  # outside a batch, TorchServe's default dimension
    assert metrics.drain() == [
        HandlerMetric("Calls", 2.0, "count", {"stage": "pre", **error}, "counter"),
        HandlerMetric("Latency", 1.5, "s", {"stage": "pre", **error}, "gauge"),
        HandlerMetric("Bytes", 10.0, "kB", error, "gauge"),
        HandlerMetric("Ratio", 50.0, "percent", error, "histogram"),
        HandlerMetric("Tokens", 7.0, "count", {"stage": "pre", **error}, "gauge"),
        HandlerMetric("Failures", 1.0, "", error, "counter"),
    ]
    assert metrics.drain() == []


def test_within_a_batch_the_model_name_and_level_are_added_as_torchserve_does() -> None:
    metrics = HandlerMetrics("resnet")
    metrics.set_request_ids({0: "a", 1: "b"})
    metrics.add_counter("Calls", 1, None, [Dimension("stage", "pre")])
    metrics.add_time("Latency", 2.0, dimensions=[Dimension("Level", "Custom")])
    metrics.add_error("Failures", 1)
    model = {"ModelName": "resnet", "Level": "Model"}
    assert metrics.drain() == [
        HandlerMetric("Calls", 1.0, "count", {"stage": "pre", **model}, "counter"),
        HandlerMetric("Latency", 2.0, "ms", {"Level": "Custom", "ModelName": "resnet"}, "gauge"),
        HandlerMetric("Failures", 1.0, "", {"Level": "Error"}, "counter"),
    ]


def test_declared_metrics_take_dimension_values() -> None:
    metrics = HandlerMetrics()
    declared = metrics.add_metric_to_cache("Queries", "count", ["ModelName"], MetricTypes.COUNTER)
    declared.add_or_update(3, ["resnet"])
    metrics.get_metric("Queries", MetricTypes.COUNTER).add_or_update(1, ["resnet"])
    declared.add_or_update(1, ["too", "many"])
    declared.update(2, "req-a", [Dimension("ModelName", "vgg")])
    assert metrics.drain() == [
        HandlerMetric("Queries", 3.0, "count", {"ModelName": "resnet"}, "counter"),
        HandlerMetric("Queries", 1.0, "count", {"ModelName": "resnet"}, "counter"),
        HandlerMetric("Queries", 2.0, "count", {"ModelName": "vgg"}, "counter"),
    ]
    with pytest.raises(KeyError, match="declare it with add_metric_to_cache"):
        metrics.get_metric("Queries", MetricTypes.GAUGE)


def test_invalid_metric_updates_are_refused_or_dropped() -> None:
    metrics = HandlerMetrics()
    with pytest.raises(ValueError, match="time metric"):
        metrics.add_time("Latency", 1, unit="minutes")
    with pytest.raises(ValueError, match="size metric"):
        metrics.add_size("Bytes", 1, unit="TB")
    with pytest.raises(ValueError, match="unknown metric type"):
        metrics.add_metric("X", 1, "count", metric_type="summary")
    metrics.add_counter("Calls", -1)
    assert metrics.drain() == []


def test_dimensions_and_types_from_torchserves_own_package_are_accepted() -> None:
    from ts.metrics.dimension import Dimension as TorchServeDimension
    from ts.metrics.metric_type_enum import MetricTypes as TorchServeMetricTypes

    metrics = HandlerMetrics()
    metrics.add_metric(
        "X", 1, "count", None, [TorchServeDimension("a", "b")], TorchServeMetricTypes.HISTOGRAM
    )
    assert metrics.drain() == [
        HandlerMetric("X", 1.0, "count", {"a": "b", "Level": "Error"}, "histogram")
    ]
