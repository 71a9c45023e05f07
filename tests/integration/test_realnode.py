"""The real node runs pods for real: an image built from Debian packages without a registry
serves HTTP in a container, a Service reaches it through kube-proxy, a pod reaches the
apiserver through the kubernetes Service, pods find Services by name through cluster DNS,
and teardown leaves nothing on the host."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e import images
from e2e.localcluster import LocalCluster, realnode
from e2e.support import wait_for
from tests.realnode import SharedRealNode

pytestmark = pytest.mark.slow

WEB = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      nodeSelector: {kubernetes.io/hostname: real-node}
      containers:
      - name: web
        image: %(image)s
        imagePullPolicy: Never
        command:
        - sh
        - -c
        - mkdir -p /srv && hostname > /srv/index.html && exec busybox httpd -f -p 8080 -h /srv
        ports: [{containerPort: 8080}]
        readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"""

CLIENT = """
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default}
spec:
  nodeSelector: {kubernetes.io/hostname: real-node}
  restartPolicy: Never
  containers:
  - name: client
    image: %(image)s
    imagePullPolicy: Never
    command:
    - sh
    - -c
    - >-
      busybox wget -q -O- http://$WEB_SERVICE_HOST/ &&
      busybox wget -q -O- --no-check-certificate
      --header "Authorization: Bearer $(cat /var/run/secrets/kubernetes.io/serviceaccount/token)"
      --header "Content-Type: application/json"
      --post-data '{"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}'
      https://$KUBERNETES_SERVICE_HOST/apis/authentication.k8s.io/v1/selfsubjectreviews
"""

# busybox's nslookup asks the nameserver directly; getent and wget go through glibc's
# resolver and the search path, as applications do
DNS_CLIENT = """
apiVersion: v1
kind: Pod
metadata: {name: dns-client, namespace: default}
spec:
  nodeSelector: {kubernetes.io/hostname: real-node}
  restartPolicy: Never
  containers:
  - name: client
    image: %(image)s
    imagePullPolicy: Never
    command:
    - sh
    - -c
    - >-
      cat /etc/resolv.conf && echo --- &&
      busybox nslookup kubernetes.default.svc.cluster.local && echo --- &&
      getent hosts web && echo --- &&
      busybox wget -q -O- http://web/ && echo --- &&
      ! getent hosts example.com
"""


def run_pod(cluster: LocalCluster, manifest: str, name: str) -> str:
    """Apply a pod that runs to completion and return its log."""
    cluster.kubectl("apply", "-f", "-", input=manifest)

    def finished() -> bool:
        phase = cluster.kubectl("get", "pod", name, "-o", "jsonpath={.status.phase}").stdout
        assert phase != "Failed", cluster.kubectl("logs", name, check=False).stdout
        return phase == "Succeeded"

    wait_for(finished, 60, f"the {name} pod to finish")
    return cluster.kubectl("logs", name).stdout


def deploy_web(cluster: LocalCluster) -> set[str]:
    """The web Deployment and Service, rolled out; returns the pods' names."""
    cluster.kubectl("apply", "-f", "-", input=WEB % {"image": images.base().ref})
    cluster.kubectl("rollout", "status", "deployment/web", "--timeout=90s", timeout=100)
    pods = json.loads(cluster.kubectl("get", "pods", "-l", "app=web", "-o", "json").stdout)
    return {p["metadata"]["name"] for p in pods["items"]}


def cluster_ip(cluster: LocalCluster, service: str, namespace: str = "default") -> str:
    return cluster.kubectl(
        "get", "service", service, "-n", namespace, "-o", "jsonpath={.spec.clusterIP}"
    ).stdout


@pytest.fixture(scope="module")
def real_cluster(real_node: SharedRealNode) -> Iterator[LocalCluster]:
    local = real_node.with_images(images.base())
    yield local
    if real_node.up:  # the modules after this one share the node
        local.kubectl("delete", "deployment,service", "web", "--wait=false", check=False)
        local.kubectl("delete", "pod", "client", "dns-client", "--wait=false", check=False)


def test_pods_serve_through_a_service_and_reach_the_apiserver(real_cluster: LocalCluster) -> None:
    cluster = real_cluster
    names = deploy_web(cluster)
    pods = json.loads(cluster.kubectl("get", "pods", "-l", "app=web", "-o", "json").stdout)
    for pod in pods["items"]:
        assert pod["spec"]["nodeName"] == realnode.NODE_NAME
        # the host reaches pod addresses through the node's veth
        url = f"http://{pod['status']['podIP']}:8080/"
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.read().decode().strip() == pod["metadata"]["name"]

    output = run_pod(cluster, CLIENT % {"image": images.base().ref}, "client")
    served_by, api_answer = output.split("\n", 1)
    assert served_by in names
    user = json.loads(api_answer)["status"]["userInfo"]["username"]
    assert user == "system:serviceaccount:default:default"


def test_pods_find_services_by_name(real_cluster: LocalCluster) -> None:
    cluster = real_cluster
    names = deploy_web(cluster)
    assert cluster_ip(cluster, "kube-dns", "kube-system") == realnode.CLUSTER_DNS_IP

    output = run_pod(cluster, DNS_CLIENT % {"image": images.base().ref}, "dns-client")
    resolv_conf, nslookup, getent, served_by, outside = output.split("---\n")
    # the kube-dns Service is the only nameserver: the host's resolver is never used
    nameservers = [line for line in resolv_conf.splitlines() if line.startswith("nameserver")]
    assert nameservers == [f"nameserver {realnode.CLUSTER_DNS_IP}"]
    assert "search default.svc.cluster.local svc.cluster.local cluster.local" in resolv_conf
    assert f"Address: {cluster_ip(cluster, 'kubernetes')}" in nslookup
    assert getent.split() == [cluster_ip(cluster, "web"), "web.default.svc.cluster.local"]
    assert served_by.strip() in names
    assert outside == ""


def test_down_leaves_nothing_behind(real_cluster: LocalCluster) -> None:
    second = LocalCluster(real_cluster.name + "-b", real_node=True)
    second.up()
    pids = set(second.state.pids.values())
    link = f"marfleet{int(second.state.host.split('.')[2])}"
    assert link != f"marfleet{int(real_cluster.state.host.split('.')[2])}"
    second.down()
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    assert not Path(f"/sys/class/net/{link}").exists()
    assert not Path(f"/run/netns/marfleet-{second.name}").exists()
    assert not list(Path("/sys/fs/cgroup").glob(f"*/{realnode.cgroup_name(second.name)}"))
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(second.dir) not in mounts
    assert real_cluster.kubectl("get", "--raw", "/readyz").stdout == "ok"
    assert subprocess.run(["ip", "netns", "pids", f"marfleet-{real_cluster.name}"]).returncode == 0
