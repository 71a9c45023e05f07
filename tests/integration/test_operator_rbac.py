"""The operator works with exactly the RBAC rules below and nothing more (the rules the Helm
chart grants): it runs as a ServiceAccount whose token is the only credential it has."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import yaml
from kubernetes import client as k8s

from e2e.localcluster import LocalCluster
from tests.integration.test_operator import (
    Operators,
    api,
    apply,
    design_example,
    events,
    small,
    wait_for,
    wait_ready,
)
from tests.integration.test_operator_crd import install_crd

pytestmark = pytest.mark.slow

__all__ = ["api"]  # module fixture shared with test_operator.py

SYSTEM = "marfleet-rbac"
WRITE = ["get", "list", "watch", "create", "patch", "delete"]
CLUSTER_RULES = [
    {
        "apiGroups": ["serving.marfleet.io"],
        "resources": ["inferenceservices"],
        "verbs": ["get", "list", "watch"],
    },
    {
        "apiGroups": ["serving.marfleet.io"],
        "resources": ["inferenceservices/status"],
        "verbs": ["get", "patch"],
    },
    {
        "apiGroups": ["serving.marfleet.io"],
        "resources": ["inferenceservices/finalizers"],
        "verbs": ["update"],
    },
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": WRITE},
    {"apiGroups": [""], "resources": ["services", "configmaps", "serviceaccounts"], "verbs": WRITE},
    {
        "apiGroups": ["rbac.authorization.k8s.io"],
        "resources": ["roles", "rolebindings"],
        "verbs": WRITE,
    },
    {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"], "verbs": WRITE},
    {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": WRITE},
    {"apiGroups": ["keda.sh"], "resources": ["scaledobjects"], "verbs": WRITE},
    {"apiGroups": ["monitoring.coreos.com"], "resources": ["servicemonitors"], "verbs": WRITE},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    {
        "apiGroups": ["apiextensions.k8s.io"],
        "resources": ["customresourcedefinitions"],
        "verbs": ["get", "list", "watch"],
    },
]
LEASE_RULES = [
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "resourceNames": ["marfleet-operator"],
        "verbs": ["get", "update"],
    },
]


def rbac_objects() -> list[dict[str, object]]:
    subject = [{"kind": "ServiceAccount", "name": "operator", "namespace": SYSTEM}]
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM}},
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "operator", "namespace": SYSTEM},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "marfleet-rbac-test"},
            "rules": CLUSTER_RULES,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "marfleet-rbac-test"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "marfleet-rbac-test",
            },
            "subjects": subject,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "election", "namespace": SYSTEM},
            "rules": LEASE_RULES,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "election", "namespace": SYSTEM},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "election",
            },
            "subjects": subject,
        },
    ]


@pytest.fixture(scope="module")
def limited(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operators]:
    install_crd(cluster)
    manifest = yaml.safe_dump_all(rbac_objects())
    cluster.kubectl("apply", "-f", "-", input=manifest)
    token = cluster.kubectl("create", "token", "operator", "-n", SYSTEM).stdout.strip()
    config = json.loads(cluster.kubeconfig.read_text())
    config["users"] = [{"name": "operator", "user": {"token": token}}]
    config["contexts"][0]["context"]["user"] = "operator"
    workdir = tmp_path_factory.mktemp("rbac")
    kubeconfig = workdir / "operator.kubeconfig"
    kubeconfig.write_text(json.dumps(config))
    ops = Operators(cluster, workdir)
    ops.start(kubeconfig=kubeconfig, lease=(SYSTEM, "marfleet-operator"))
    try:
        yield ops
    finally:
        ops.stop_all()
        cluster.kubectl("delete", "-f", "-", "--wait=false", input=manifest)


def test_least_privilege_is_enough(
    cluster: LocalCluster, api: k8s.ApiClient, limited: Operators
) -> None:
    namespace = "rbac-apps"
    cluster.kubectl("create", "namespace", namespace)
    try:
        apply(cluster, namespace, design_example())
        bad = small("broken")
        bad["spec"]["variants"][0]["model"]["uri"] = "s3://bucket/m.mar"
        apply(cluster, namespace, bad)
        wait_ready(api, namespace, "resnet50")
        wait_for(lambda: events(api, namespace, "broken"), 15, "an event recorded by the operator")
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false")
    operator = limited.current
    assert operator is not None
    log = operator.log.read_text()
    denied = [
        line for line in log.splitlines() if f'User \\"system:serviceaccount:{SYSTEM}' in line
    ]
    assert denied == [], denied[:3]
