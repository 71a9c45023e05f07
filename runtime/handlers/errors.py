"""Errors a handler raises on purpose, and the ones the runtime raises: a model cannot load,
or every client of a streaming batch went away."""

from __future__ import annotations


class PredictionException(Exception):
    """Raised by a handler to fail the batch with `error_code` and `message` (TorchServe API)."""

    def __init__(self, message: str, error_code: int = 500) -> None:
        self.message = message
        self.error_code = error_code
        super().__init__(message)

    def __str__(self) -> str:
        return f"{self.message} : {self.error_code}"


class ModelLoadError(Exception):
    """A model could not be loaded; the message says which file or handler and why."""


class RequestCancelled(Exception):
    """Every client of the batch went away: the handler's work has no one to go to."""
