"""The scale profile's extra simulated nodes are shaped exactly like nodes.yaml's CPU nodes, so
a pod that fits one fits the others (the profile changes how many, not what)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from e2e.localcluster.cluster import (
    BASE_CPU_NODES,
    NODES_FILE,
    ClusterError,
    LocalCluster,
    cpu_node,
    cpu_node_name,
)


def listed_cpu_nodes() -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(NODES_FILE.read_text()) if d]
    return [d for d in docs if d["metadata"]["name"].startswith("cpu-node-")]


def test_nodes_yaml_has_the_base_cpu_nodes_by_the_same_names() -> None:
    names = [d["metadata"]["name"] for d in listed_cpu_nodes()]
    assert names == [cpu_node_name(i) for i in range(1, BASE_CPU_NODES + 1)]


def test_an_extra_node_is_a_listed_cpu_node_but_for_its_name() -> None:
    listed = listed_cpu_nodes()[0]
    extra = cpu_node(37)
    assert extra["metadata"]["name"] == "cpu-node-37"  # type: ignore[index]
    renamed = yaml.safe_load(
        yaml.safe_dump(extra).replace("cpu-node-37", listed["metadata"]["name"])
    )
    assert renamed == listed


def test_fewer_cpu_nodes_than_the_base_are_refused() -> None:
    with pytest.raises(ClusterError, match="at least 2"):
        LocalCluster("x", cpu_nodes=1)
