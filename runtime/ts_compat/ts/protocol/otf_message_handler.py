"""TorchServe's `ts.protocol.otf_message_handler`: the streaming call handlers make."""

from marfleet.runtime.handlers.streaming import (
    send_intermediate_predict_response as send_intermediate_predict_response,
)
