"""TorchServe's `ts.torch_handler.request_envelope`: marfleet's (handlers/envelopes.py)."""
