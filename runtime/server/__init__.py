"""The HTTP side of `marfleet serve`: a reusable HTTP core (http, routing) and the TorchServe,
KServe and management APIs built on it.

gRPC's fork support is turned off before any module here imports grpc (it reads the variable
once, at import). With it on, every worker process the server starts (fork, then exec) runs
gRPC's fork handlers in its first moments, and while other threads serve gRPC calls about one
child in a hundred dies of SIGSEGV before it reaches exec. The server never forks without exec,
which is all that support is for. An explicit GRPC_ENABLE_FORK_SUPPORT in the environment is
left as it is."""

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
