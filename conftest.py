"""Fixtures shared by every test tier: the local Kubernetes control plane, and one real node.

One cluster per test session, on loopback with its own ports and state directory, so test
runs can go on beside a developer's `make cluster-up` cluster. Missing binaries fail the
tests loudly (a skipped operator test is a hole), naming the command that builds them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from e2e.localcluster import LocalCluster
from tests.realnode import SharedRealNode

REAL_NODE = SharedRealNode(f"pytest-real-{os.getpid()}")


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    local = LocalCluster(f"pytest-{os.getpid()}")
    local.up()
    try:
        yield local
    finally:
        local.down()


@pytest.fixture(scope="session")
def real_node() -> Iterator[SharedRealNode]:
    """The real-node cluster the real-node modules share (tests/realnode.py)."""
    try:
        yield REAL_NODE
    finally:
        REAL_NODE.down()


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Take the shared real node down once the next test does not use it."""
    if REAL_NODE.up and (nextitem is None or "real_node" not in nextitem.fixturenames):
        REAL_NODE.down()
