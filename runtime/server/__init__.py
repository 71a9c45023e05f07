"""The HTTP side of `marfleet serve`: a reusable HTTP core (http, routing) and the TorchServe,
KServe and management APIs built on it."""
