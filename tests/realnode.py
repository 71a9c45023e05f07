"""One real-node LocalCluster shared by the test modules that need one (the `real_node`
fixture in conftest.py: test_realnode*, the scenario among them), with the images their pods
run imported on demand.

Bringing a real node up and down costs ~40 s on the CI machine, so the modules share one
rather than each starting its own; each module deletes what it created. The node goes down
after the last test that uses it (conftest's `pytest_runtest_teardown`), not at the end of
the session, so the rest of the suite does not share the CPUs with an idle node.
"""

from __future__ import annotations

from e2e.images.oci import Image, import_into
from e2e.localcluster import LocalCluster, realnode


class SharedRealNode:
    """A real-node cluster named `name`, up on first use, its images imported once each."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._local: LocalCluster | None = None
        self._imported: set[str] = set()

    @property
    def up(self) -> bool:
        return self._local is not None

    def with_images(self, *images: Image) -> LocalCluster:
        """The cluster, brought up if it is not, holding `images`."""
        if self._local is None:
            local = LocalCluster(self.name, real_node=True)
            local.up()
            self._local, self._imported = local, set()
        for image in images:
            if image.ref not in self._imported:
                import_into(image, realnode.containerd_socket(self._local.dir / "node"))
                self._imported.add(image.ref)
        return self._local

    def down(self) -> None:
        """Tear the cluster down, if it is up; a later `with_images` starts a new one."""
        local, self._local = self._local, None
        if local is not None:
            local.down()
