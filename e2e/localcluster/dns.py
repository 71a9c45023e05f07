"""Cluster DNS for the real node: CoreDNS pods there behind the `kube-dns` Service.

The kubelet hands every pod `realnode.CLUSTER_DNS_IP` as its only nameserver; this module
puts the Service at that address. The objects are one manifest applied with kubectl, like
everything else the cluster applies, with the image as its only parameter. The Corefile
answers cluster names only: nothing outside the cluster is reachable from the node, so
other names fail at once instead of waiting on an upstream that never answers.

`deploy` runs as soon as containerd is up (the pod starts while the node registers);
`wait_until_answering` then asks the Service address from inside the node's network
namespace, through kube-proxy's rules, which is the path a pod's lookup takes, so `up()`
returns only once a pod's lookup would succeed.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from . import realnode
from .nodenet import NodeNet

if TYPE_CHECKING:
    from .cluster import LocalCluster

PROBE_NAME = "kubernetes.default.svc.cluster.local"
CLONE_NEWNET = 0x40000000

MANIFEST = """
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- apiGroups: [""]
  resources: [services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  Corefile: |
    .:53 {
        errors
        health :8080
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            pods verified
        }
    }
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      priorityClassName: system-cluster-critical
      nodeSelector: {kubernetes.io/hostname: %(node)s}
      # its own lookups would go to itself; the kubelet gives Default an empty resolver
      dnsPolicy: Default
      containers:
      - name: coredns
        image: %(image)s
        imagePullPolicy: Never
        args: [-conf, /etc/coredns/Corefile]
        ports:
        - {name: dns, containerPort: 53, protocol: UDP}
        - {name: dns-tcp, containerPort: 53, protocol: TCP}
        readinessProbe: {httpGet: {path: /ready, port: 8181}, periodSeconds: 1}
        livenessProbe: {httpGet: {path: /health, port: 8080}, periodSeconds: 10}
        volumeMounts: [{name: config, mountPath: /etc/coredns, readOnly: true}]
      volumes: [{name: config, configMap: {name: coredns}}]
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: %(cluster_ip)s
  selector: {k8s-app: kube-dns}
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
"""


class DnsError(RuntimeError):
    pass


def deploy(cluster: LocalCluster) -> None:
    """Load the CoreDNS image into the node's containerd and apply the DNS objects."""
    # Imported here: e2e.images builds with the toolchain this package defines, so importing
    # it at the top would make `import e2e.images` circular.
    from e2e.images.node import coredns
    from e2e.images.oci import import_into

    image = coredns()
    import_into(image, realnode.containerd_socket(cluster.dir / "node"))
    manifest = MANIFEST % {
        "image": image.ref,
        "node": realnode.NODE_NAME,
        "cluster_ip": realnode.CLUSTER_DNS_IP,
    }
    cluster.kubectl("apply", "-f", "-", input=manifest)


def wait_until_answering(cluster: LocalCluster, net: NodeNet, deadline: float) -> None:
    """Return once the kube-dns Service resolves PROBE_NAME for the node's pods."""
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            if lookup(net.netns_path, realnode.CLUSTER_DNS_IP, PROBE_NAME):
                return
            last = "an answer without addresses"
        except (OSError, DnsError) as error:
            last = str(error) or type(error).__name__
        time.sleep(0.2)
    pods = cluster.kubectl(
        "get", "pods", "-n", "kube-system", "-l", "k8s-app=kube-dns", "-o", "wide", check=False
    )
    raise DnsError(
        f"cluster DNS at {realnode.CLUSTER_DNS_IP} did not resolve {PROBE_NAME} in time "
        f"(last: {last}); CoreDNS pods:\n{pods.stdout or pods.stderr}"
        f"see `kubectl -n kube-system logs deploy/coredns` and {cluster.dir}/kubelet.log"
    )


def lookup(netns: Path, server: str, name: str, timeout: float = 0.5) -> list[str]:
    """The IPv4 addresses `server` gives for `name`, asked from inside network namespace
    `netns` (setns changes only the calling thread, so the query runs on a thread of its own
    that ends with it)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(_in_netns, netns, lambda: _query(server, name, timeout)).result()


def _in_netns(netns: Path, work: Callable[[], list[str]]) -> list[str]:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(netns, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns {netns}: {os.strerror(errno)}")
    finally:
        os.close(fd)
    return work()


def _query(server: str, name: str, timeout: float) -> list[str]:
    """One recursive-desired A query over UDP; raises DnsError on any error code."""
    ident = int.from_bytes(os.urandom(2), "big")
    question = b"".join(bytes([len(label)]) + label.encode() for label in name.split("."))
    question += b"\0" + struct.pack("!HH", 1, 1)  # type A, class IN
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.connect((server, 53))
        sock.send(struct.pack("!6H", ident, 0x0100, 1, 0, 0, 0) + question)
        reply = sock.recv(4096)
    answer_id, flags, _, answers, _, _ = struct.unpack_from("!6H", reply)
    if answer_id != ident:
        raise DnsError(f"{server} answered another query")
    if flags & 0xF:
        raise DnsError(f"{server} answered {name} with response code {flags & 0xF}")
    offset = 12 + len(question)
    addresses = []
    for _ in range(answers):
        offset = _skip_name(reply, offset)
        record_type, _, _, length = struct.unpack_from("!HHIH", reply, offset)
        offset += 10
        if record_type == 1:
            addresses.append(socket.inet_ntoa(reply[offset : offset + length]))
        offset += length
    return addresses


def _skip_name(message: bytes, offset: int) -> int:
    """The offset just past the (possibly compressed) domain name at `offset`."""
    while message[offset] != 0:
        if message[offset] >= 0xC0:
            return offset + 2
        offset += message[offset] + 1
    return offset + 1
