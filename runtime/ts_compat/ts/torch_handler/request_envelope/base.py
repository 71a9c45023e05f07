"""TorchServe's `ts.torch_handler.request_envelope.base`."""

from marfleet.runtime.handlers.envelopes import BaseEnvelope as BaseEnvelope
