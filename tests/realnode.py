"""A real-node LocalCluster for a test module, with the images its pods run imported."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from e2e.images.oci import Image, import_into
from e2e.localcluster import LocalCluster, realnode


@contextmanager
def real_node_cluster(prefix: str, images: tuple[Image, ...]) -> Iterator[LocalCluster]:
    """A cluster named `<prefix>-<pid>` (tests running beside each other never share one),
    torn down afterwards whatever happened."""
    local = LocalCluster(f"{prefix}-{os.getpid()}", real_node=True)
    local.up()
    try:
        for image in images:
            import_into(image, realnode.containerd_socket(local.dir / "node"))
        yield local
    finally:
        local.down()
