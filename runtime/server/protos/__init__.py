"""TorchServe 0.12's gRPC interfaces (copied from its model-server.jar) and the message classes
generated from them; `make protos` regenerates the `*_pb2` modules. Never edit those by hand."""
