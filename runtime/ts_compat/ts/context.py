"""TorchServe's `ts.context`."""

from marfleet.runtime.handlers.context import Context as Context
from marfleet.runtime.handlers.context import RequestProcessor as RequestProcessor
