"""TorchServe's `ts.torch_handler.request_envelope.json`."""

from marfleet.runtime.handlers.envelopes import JSONEnvelope as JSONEnvelope
