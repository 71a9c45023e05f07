"""TorchServe's `ts.protocol`."""
