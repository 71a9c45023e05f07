"""The real node's network: its own network namespace joined to the host by one veth pair.

Everything the node's kubelet, containerd, CNI bridge and kube-proxy do to the network
(links, addresses, sysctls such as ip_forward, every iptables rule) happens inside
`marfleet-<cluster>`, so the host's tables and the other clusters on the machine are never
touched, and deleting the namespace removes all of it at once. On the host there is only
the veth end `marfleet<slot>` (its address is where the node reaches the apiserver) and a
route to the node's pod subnet through it; both vanish with the link.
"""

from __future__ import annotations

import contextlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

SLOTS = range(1, 250)
BRIDGE = "marfleet-br"
UPLINK = "uplink"


class NodeNetError(RuntimeError):
    pass


def netns_name(cluster: str) -> str:
    """The network namespace of a cluster's real node (its pods' addresses and ClusterIPs work
    there)."""
    return f"marfleet-{cluster}"


@dataclass(frozen=True)
class NodeNet:
    """Addresses of one real node; `slot` keeps two clusters' nodes apart."""

    cluster: str
    slot: int

    @property
    def netns(self) -> str:
        return netns_name(self.cluster)

    @property
    def netns_path(self) -> Path:
        return Path("/run/netns") / self.netns

    @property
    def host_link(self) -> str:
        return f"marfleet{self.slot}"

    @property
    def host_ip(self) -> str:
        return f"10.201.{self.slot}.1"

    @property
    def node_ip(self) -> str:
        return f"10.201.{self.slot}.2"

    @property
    def pod_subnet(self) -> str:
        return f"10.202.{self.slot}.0/24"

    def in_netns(self, *command: str) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *command]


def _run(*command: str) -> None:
    result = subprocess.run(list(command), capture_output=True, text=True)
    if result.returncode != 0:
        raise NodeNetError(f"`{' '.join(command)}` failed: {result.stderr.strip()}")


def create(cluster: str) -> NodeNet:
    """Make the namespace and take the first free slot (the veth name is the lock)."""
    _run("ip", "netns", "add", netns_name(cluster))
    for slot in SLOTS:
        net = NodeNet(cluster, slot)
        if Path(f"/sys/class/net/{net.host_link}").exists():
            continue
        veth = ["type", "veth", "peer", "name", UPLINK, "netns", net.netns]
        added = subprocess.run(["ip", "link", "add", net.host_link, *veth], capture_output=True)
        if added.returncode == 0:
            break
    else:
        delete(cluster)
        raise NodeNetError(f"no free marfleet<N> link name in {SLOTS}: run `make cluster-down`")
    try:
        _configure(net)
    except BaseException:
        delete(cluster)
        raise
    return net


def _configure(net: NodeNet) -> None:
    _run("ip", "addr", "add", f"{net.host_ip}/24", "dev", net.host_link)
    _run("ip", "link", "set", net.host_link, "up")
    _run("ip", "route", "add", net.pod_subnet, "via", net.node_ip, "dev", net.host_link)
    _run(*net.in_netns("ip", "link", "set", "lo", "up"))
    _run(*net.in_netns("ip", "addr", "add", f"{net.node_ip}/24", "dev", UPLINK))
    _run(*net.in_netns("ip", "link", "set", UPLINK, "up"))
    _run(*net.in_netns("ip", "route", "add", "default", "via", net.host_ip))
    # per-namespace sysctls: pods are routed through the node, and bridged pod-to-pod
    # traffic must pass kube-proxy's rules for a Service to reach a pod on the same bridge
    for setting in ("net.ipv4.ip_forward=1", "net.bridge.bridge-nf-call-iptables=1"):
        _run(*net.in_netns("sysctl", "-qw", setting))


def delete(cluster: str) -> None:
    """Remove the namespace; its links, bridge and rules go with it. The host's veth end is
    deleted first, explicitly: the kernel tears a deleted namespace's links down in the
    background, so the host end would otherwise outlive `down` by a moment (and a cluster
    brought up right after could find its link name taken)."""
    path = Path("/run/netns") / netns_name(cluster)
    if path.exists():
        host_end = _host_end(path.name)
        if host_end:
            _run("ip", "link", "delete", host_end)  # deletes both ends of the pair
        _run("ip", "netns", "delete", path.name)


def _host_end(netns: str) -> str:
    """The host's `marfleet<slot>` link paired with the namespace's uplink, or "" if none."""
    found = subprocess.run(
        ["ip", "netns", "exec", netns, "cat", f"/sys/class/net/{UPLINK}/iflink"],
        capture_output=True,
        text=True,
    )
    if found.returncode != 0:
        return ""
    index = found.stdout.strip()
    for link in Path("/sys/class/net").glob("marfleet*"):
        with contextlib.suppress(OSError):
            if (link / "ifindex").read_text().strip() == index:
                return link.name
    return ""
