"""The real-node end-to-end scenario (`python -m e2e.scenario`, `make real`)."""
