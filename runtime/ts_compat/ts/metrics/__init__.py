"""TorchServe's `ts.metrics`."""
