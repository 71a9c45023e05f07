"""TorchServe's `ts.torch_handler.request_envelope.kserve`."""

from marfleet.runtime.handlers.envelopes import KServeEnvelope as KServeEnvelope
