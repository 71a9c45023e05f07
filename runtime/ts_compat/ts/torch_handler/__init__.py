"""TorchServe's `ts.torch_handler`: the default handlers."""
