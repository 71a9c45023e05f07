"""TorchServe's `ts.torch_handler.request_envelope.kservev2`."""

from marfleet.runtime.handlers.envelopes import KServev2Envelope as KServev2Envelope
