"""TorchServe's `ts.torch_handler.request_envelope.body`."""

from marfleet.runtime.handlers.envelopes import BodyEnvelope as BodyEnvelope
