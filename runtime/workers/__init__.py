"""Worker processes that run model handlers, their supervision, and the model registry."""
