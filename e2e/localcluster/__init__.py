"""The local Kubernetes control plane used by `make cluster-up` and the test fixtures."""

from .cluster import ClusterError, LocalCluster

__all__ = ["ClusterError", "LocalCluster"]
