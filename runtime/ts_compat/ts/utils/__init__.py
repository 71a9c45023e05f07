"""TorchServe's `ts.utils`."""
