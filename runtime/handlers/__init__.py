"""TorchServe-compatible handlers: loading them, the `Context` they see, and the built-ins.

`service.ModelService` is the one entry point the worker processes use; everything else here
exists so that a handler written for TorchServe runs unchanged inside it.
"""
