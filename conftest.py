"""Fixtures shared by every test tier: the local Kubernetes control plane.

One cluster per test session, on loopback with its own ports and state directory, so test
runs can go on beside a developer's `make cluster-up` cluster. Missing binaries fail the
tests loudly (a skipped operator test is a hole), naming the command that builds them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from e2e.localcluster import LocalCluster


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    local = LocalCluster(f"pytest-{os.getpid()}")
    local.up()
    try:
        yield local
    finally:
        local.down()
