"""The built-in handlers, one handler class per module (TorchServe's rule for handler modules)."""
