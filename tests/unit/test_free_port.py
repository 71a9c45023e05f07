"""free_port hands out each port once, never one something listens on, and never one from the
kernel's range for outgoing connections (where a client could take it before the server)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from e2e import support


def test_ports_are_distinct_and_outside_the_ephemeral_range() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [support.free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(port in support.PORTS and port < low for port in ports)


def test_a_port_something_listens_on_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        monkeypatch.setattr(support, "PORTS", range(busy, busy + 1))
        with pytest.raises(RuntimeError, match="no free TCP port"):
            support.free_port()
