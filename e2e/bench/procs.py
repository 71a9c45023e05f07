"""Process helpers for the benchmarks: free ports (e2e.support) and waiting for a listener."""

from __future__ import annotations

import socket

from e2e.support import free_port, wait_for

__all__ = ["free_port", "wait_for_port"]


def wait_for_port(port: int, timeout: float) -> None:
    def listening() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    wait_for(listening, timeout, f"a listener on 127.0.0.1:{port}", interval=0.1)
