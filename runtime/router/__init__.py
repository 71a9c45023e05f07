"""`marfleet router`: splits one InferenceService's traffic between its variants by weight.

Layers, each in its own module: `balance` and `sticky` pick a variant (pure), `table` is the
routing state in force (swapped whole on every weight change), `upstream` is the keep-alive
HTTP/1.1 client to the variants, `proxy` turns one client request into one upstream exchange
(served on the runtime's HTTP core, streamed answers included), `source` follows weights from
the Kubernetes API or takes them from flags, and `cli` assembles them.
"""
