"""marfleet's local control plane, end-to-end scenarios and benchmarks."""
