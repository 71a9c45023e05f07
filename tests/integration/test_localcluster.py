"""The local control plane is real Kubernetes: scheduling, RBAC, admission and garbage
collection all happen, against simulated KWOK nodes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from e2e.localcluster import LocalCluster
from e2e.support import wait_for

pytestmark = pytest.mark.slow


def pods(cluster: LocalCluster, namespace: str, selector: str) -> list[dict]:
    out = cluster.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout
    items: list[dict] = json.loads(out)["items"]
    return items


def namespace(cluster: LocalCluster, name: str) -> str:
    cluster.kubectl("create", "namespace", name)
    return name


GPU_DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: gpu-app, namespace: %(ns)s}
spec:
  replicas: 3
  selector: {matchLabels: {app: gpu-app}}
  template:
    metadata: {labels: {app: gpu-app}}
    spec:
      tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
      affinity:
        nodeAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            nodeSelectorTerms:
            - matchExpressions:
              - {key: nvidia.com/gpu.product, operator: In, values: [NVIDIA-H100-80GB-HBM3]}
      containers:
      - name: app
        image: example.invalid/app:1
        resources: {limits: {nvidia.com/gpu: 1}}
"""


def test_gpu_pods_land_on_the_h100_node(cluster: LocalCluster) -> None:
    ns = namespace(cluster, "gpu")
    cluster.kubectl("apply", "-f", "-", input=GPU_DEPLOYMENT % {"ns": ns})

    def all_running() -> bool:
        items = pods(cluster, ns, "app=gpu-app")
        return len(items) == 3 and all(p["status"].get("phase") == "Running" for p in items)

    wait_for(all_running, 30, "3 GPU pods Running")
    assert {p["spec"]["nodeName"] for p in pods(cluster, ns, "app=gpu-app")} == {"gpu-h100-node"}


def test_pod_asking_for_too_many_gpus_stays_pending(cluster: LocalCluster) -> None:
    ns = namespace(cluster, "greedy")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "greedy", "namespace": ns},
        "spec": {
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
            "containers": [
                {
                    "name": "app",
                    "image": "example.invalid/app:1",
                    "resources": {"limits": {"nvidia.com/gpu": 9}},
                }
            ],
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))

    def failed_scheduling() -> bool:
        out = cluster.kubectl(
            "get",
            "events",
            "-n",
            ns,
            "--field-selector",
            "involvedObject.name=greedy",
            "-o",
            "json",
        ).stdout
        return any(e["reason"] == "FailedScheduling" for e in json.loads(out)["items"])

    wait_for(failed_scheduling, 30, "a FailedScheduling event")
    phase = cluster.kubectl("get", "pod", "greedy", "-n", ns, "-o", "jsonpath={.status.phase}")
    assert phase.stdout == "Pending"
    assert "nvidia.com/gpu" in cluster.kubectl("describe", "pod", "greedy", "-n", ns).stdout


def test_service_account_without_rights_is_forbidden(cluster: LocalCluster) -> None:
    ns = namespace(cluster, "rbac")
    cluster.kubectl("create", "serviceaccount", "nobody", "-n", ns)
    token = cluster.kubectl("create", "token", "nobody", "-n", ns).stdout.strip()
    denied = cluster.kubectl("get", "secrets", "-n", ns, "--token", token, check=False)
    assert denied.returncode != 0
    assert "Forbidden" in denied.stderr and "system:serviceaccount:rbac:nobody" in denied.stderr
    allowed = cluster.kubectl("get", "secrets", "-n", ns)
    assert allowed.returncode == 0


def test_invalid_object_is_refused_by_the_apiserver(cluster: LocalCluster) -> None:
    bad = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "Not_A_DNS_Name", "namespace": "default"},
        "spec": {
            "replicas": -1,
            "selector": {"matchLabels": {"app": "x"}},
            "template": {
                "metadata": {"labels": {"app": "y"}},
                "spec": {"containers": [{"name": "c", "image": "i"}]},
            },
        },
    }
    result = cluster.kubectl(
        "apply", "--dry-run=server", "-f", "-", input=json.dumps(bad), check=False
    )
    assert result.returncode != 0
    assert "is invalid" in result.stderr
    assert "spec.replicas" in result.stderr and "metadata.name" in result.stderr


def test_garbage_collector_removes_replicasets_and_pods(cluster: LocalCluster) -> None:
    ns = namespace(cluster, "gc")
    cluster.kubectl(
        "create", "deployment", "web", "-n", ns, "--image=example.invalid/web:1", "--replicas=2"
    )
    wait_for(lambda: len(pods(cluster, ns, "app=web")) == 2, 30, "2 pods")
    cluster.kubectl("delete", "deployment", "web", "-n", ns, "--wait=false")

    def gone() -> bool:
        rs = json.loads(cluster.kubectl("get", "rs", "-n", ns, "-o", "json").stdout)["items"]
        return not rs and not pods(cluster, ns, "app=web")

    wait_for(gone, 30, "ReplicaSets and pods to be garbage-collected")


def test_two_clusters_run_side_by_side(cluster: LocalCluster) -> None:
    second = LocalCluster(cluster.name + "-b")
    try:
        second.up()
        assert second.server != cluster.server
        nodes = second.kubectl("get", "nodes", "-o", "name").stdout.split()
        assert len(nodes) == 4
        pids = set(second.state.pids.values())
        assert not pids & set(cluster.state.pids.values())
    finally:
        second.down()
    assert not second.dir.exists()
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    assert cluster.kubectl("get", "--raw", "/readyz").stdout == "ok"
