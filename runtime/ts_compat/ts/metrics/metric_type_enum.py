"""TorchServe's `ts.metrics.metric_type_enum`."""

from marfleet.runtime.handlers.metrics import MetricTypes as MetricTypes
