"""The open-file limit, and the connections it leaves room for.

Why this exists: every connection a listener holds is a file descriptor, and so is every
worker's pipe, model file, archive being unpacked, log file and gRPC's own machinery. Each
listener bounds its connections (`max_connections`, 1000 by default), but a process started
with the soft limit most shells and systemd services give (1024) would let a flood on one
listener take every descriptor: the other listeners, the workers and model loading would then
fail with EMFILE (seen: 1,100 idle connections on the inference port of a server started with
1024 left its management and metrics ports answering nothing).

So at start the soft limit is raised to the hard one, as the JVM (and so TorchServe) and Go do;
and if even that leaves too little room, each listener's `max_connections` is lowered so that
all of them together leave `RESERVE` descriptors free, with a warning that says by how much
and how to raise the limit. With the limits containers get (a hard limit of a million or so)
neither happens.
"""

from __future__ import annotations

import logging
import resource
from pathlib import Path

RESERVE = 256
"""Descriptors kept free of connections: workers, files, logs, gRPC's and the loop's own."""

_NR_OPEN = Path("/proc/sys/fs/nr_open")  # the most a process may set (an infinite hard limit)


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one (or to the kernel's nr_open when the hard
    one is infinite); returns the soft limit in force afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return _nr_open()
    target = hard if hard != resource.RLIM_INFINITY else _nr_open()
    if soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return target


def fit_max_connections(max_connections: int, holders: int, log: logging.Logger) -> int:
    """The `max_connections` each of `holders` may hold (a listener; the router counts its
    connections to the variants as one more) so that together they leave RESERVE descriptors
    of the open-file limit free: `max_connections` itself when it fits (it does with any usual
    container limit), else less, with a warning."""
    limit = raise_open_file_limit()
    room = max(1, (limit - RESERVE) // max(1, holders))
    if max_connections <= room:
        return max_connections
    log.warning(
        "the open-file limit is too low for max_connections: each listener holds fewer "
        "connections; raise the limit (ulimit -n, systemd's LimitNOFILE, the container "
        "runtime's nofile) or set max_connections to at most the lowered value to silence this",
        extra={
            "open_file_limit": limit,
            "max_connections": max_connections,
            "lowered_to": room,
            "listeners": holders,
            "kept_free": RESERVE,
        },
    )
    return room


def _nr_open() -> int:
    try:
        return int(_NR_OPEN.read_text())
    except (OSError, ValueError):
        return 1024 * 1024
