"""marfleet's model-server runtime: MAR archives, TorchServe-compatible handlers, the HTTP
server with dynamic batching and per-GPU workers, the traffic router and storage fetch."""
