"""Benchmarks: marfleet serve against TorchServe 0.12, and the HTTP stack candidates."""
