"""A real worker node beside the KWOK ones: containerd + runc + Debian's CNI plugins, and the
kubelet and kube-proxy built from the control plane's own pinned module.

The machine is shared, so the node lives in namespaces that make cleanup exact:
- its own network namespace (see nodenet), so iptables rules and sysctls stay inside it;
- one private mount namespace, held by a `sleep` process, that containerd, its shims and
  the kubelet all join. Every mount they make (overlay root filesystems, volume tmpfs, pod
  network namespaces) exists only there and disappears when its last process exits. A
  tmpfs over /run and /var/lib/cni and a bind over /var/log keep the fixed paths containerd,
  libcni and the kubelet write to (shim sockets, CNI results, /var/log/pods) out of the
  host's directories (/var/lib/cni is created empty if missing), and the kernel
  tunables the kubelet insists on setting are bind-mounted files, so it never changes the
  host's panic or overcommit behaviour;
- its own cgroup root `/marfleet-<cluster>` (cgroupfs driver, cgroup v1).
Teardown kills every process in those namespaces or cgroups, removes the cgroups and
deletes the network namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from e2e import images

from .nodenet import BRIDGE, NodeNet
from .toolchain import COREDNS, KUBERNETES_NODE

NODE_NAME = "real-node"
# pods' only nameserver: the kube-dns Service (dns.py), inside the cluster's service CIDR
CLUSTER_DNS_IP = "10.96.0.10"
CGROUP_FS = Path("/sys/fs/cgroup")
# what the kubelet's container manager would write to the host's /proc/sys otherwise
KERNEL_TUNABLES = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}
DEBIAN_TOOLS = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "nsenter")
CNI_DIR = Path("/usr/lib/cni")

StartProcess = Callable[[str, Sequence[str], Sequence[str]], None]
"""(name, command, wrapper) -> None: the cluster's own start, which records the pid."""


class RealNodeError(RuntimeError):
    pass


def require_tools() -> None:
    from shutil import which

    missing = [tool for tool in DEBIAN_TOOLS if which(tool) is None]
    missing += [str(CNI_DIR / p) for p in ("bridge", "host-local") if not (CNI_DIR / p).exists()]
    missing += [str(tool.path(c)) for tool in (KUBERNETES_NODE, COREDNS) for c in tool.missing()]
    if os.geteuid() != 0:
        missing.append("root (a real node needs namespaces, cgroups and mounts)")
    if missing:
        raise RealNodeError(
            "a real node needs " + ", ".join(missing) + ": run `make setup NODE=real`"
        )


def cgroup_name(cluster: str) -> str:
    return f"marfleet-{cluster}"


def containerd_socket(node_dir: Path) -> Path:
    return node_dir / "containerd.sock"


def start(
    cluster: str,
    node_dir: Path,
    net: NodeNet,
    kubeconfig_for: Callable[[str], Path],
    start_process: StartProcess,
    deadline: float,
) -> None:
    """Start containerd, import the sandbox image, then the kubelet and kube-proxy."""
    require_tools()
    pause = images.pause()
    node_dir.mkdir(parents=True, exist_ok=True)
    _make_cgroup_root(cgroup_name(cluster))
    start_process(
        "node-namespace",
        ["/usr/bin/sleep", "infinity"],
        ["unshare", "--mount", "--propagation", "private", "nsenter", f"--net={net.netns_path}"],
    )
    holder = _pid_of(node_dir.parent, "node-namespace")
    _private_mounts(holder, node_dir)
    wrap = ["nsenter", f"--mount=/proc/{holder}/ns/mnt", f"--net=/proc/{holder}/ns/net"]
    socket = containerd_socket(node_dir)
    start_process(
        "containerd",
        ["/usr/bin/containerd", "--config", str(_containerd(node_dir, net, pause.ref))],
        wrap,
    )
    _wait_for(lambda: socket.exists(), deadline, f"containerd socket {socket}")
    images.import_into(pause, socket)
    kubelet_config = _kubelet_config(cluster, node_dir, net)
    start_process(
        "kubelet",
        [
            str(KUBERNETES_NODE.path("kubelet")),
            f"--config={kubelet_config}",
            f"--kubeconfig={kubeconfig_for('system:node:' + NODE_NAME)}",
            f"--root-dir={node_dir / 'kubelet'}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={net.node_ip}",
            "--node-labels=marfleet.io/real-node=true",
        ],
        wrap,
    )
    start_process(
        "kube-proxy",
        [
            str(KUBERNETES_NODE.path("kube-proxy")),
            f"--config={_kube_proxy_config(node_dir, net, kubeconfig_for('system:kube-proxy'))}",
        ],
        wrap,
    )


def teardown(cluster: str) -> None:
    """Kill what is left of the node (shims, containers), then remove its cgroups."""
    cgroup = cgroup_name(cluster)
    netns = Path("/run/netns") / f"marfleet-{cluster}"
    namespaces = set()
    if netns.exists():
        namespaces.add(os.stat(netns).st_ino)
    for _ in range(50):
        victims = _node_processes(cgroup, namespaces)
        if not victims:
            break
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    for hierarchy in CGROUP_FS.iterdir():
        root = hierarchy / cgroup
        if root.is_dir():
            for directory in sorted(root.glob("**/"), key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    directory.rmdir()


def _node_processes(cgroup: str, netns_inodes: set[int]) -> list[int]:
    """Processes in the node's cgroup root or its network namespace (never this one)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cgroups = (entry / "cgroup").read_text()
            in_netns = os.stat(entry / "ns" / "net").st_ino in netns_inodes
        except OSError:
            continue
        if in_netns or any(
            line.split(":", 2)[2].startswith(f"/{cgroup}/") or line.endswith(f":/{cgroup}")
            for line in cgroups.splitlines()
        ):
            found.append(int(entry.name))
    return found


def _make_cgroup_root(name: str) -> None:
    """The kubelet refuses a --cgroup-root that does not exist in every hierarchy."""
    for hierarchy in CGROUP_FS.iterdir():
        if hierarchy.name == "unified" or not hierarchy.is_dir():
            continue
        path = hierarchy / name
        path.mkdir(exist_ok=True)
        if hierarchy.name == "cpuset":
            for knob in ("cpuset.cpus", "cpuset.mems"):
                (path / knob).write_text((hierarchy / knob).read_text())


def _pid_of(cluster_dir: Path, name: str) -> int:
    pid: int = json.loads((cluster_dir / "cluster.json").read_text())["pids"][name]
    return pid


def _private_mounts(holder: int, node_dir: Path) -> None:
    enter = ["nsenter", f"--mount=/proc/{holder}/ns/mnt", "--"]
    logs = node_dir / "var-log"
    tunables = node_dir / "sysctl"
    logs.mkdir(exist_ok=True)
    # libcni keeps its result cache in /var/lib/cni whatever the configuration says
    Path("/var/lib/cni").mkdir(mode=0o700, parents=True, exist_ok=True)
    commands = [
        ["mount", "-t", "tmpfs", "-o", "mode=755", "marfleet-run", "/run"],
        ["mount", "-t", "tmpfs", "-o", "mode=700", "marfleet-cni", "/var/lib/cni"],
        ["mount", "--bind", str(logs), "/var/log"],
    ]
    for key, value in KERNEL_TUNABLES.items():
        source = tunables / key.replace("/", ".")
        source.parent.mkdir(exist_ok=True)
        source.write_text(value + "\n")
        commands.append(["mount", "--bind", str(source), f"/proc/sys/{key}"])
    for command in commands:
        result = subprocess.run([*enter, *command], capture_output=True, text=True)
        if result.returncode != 0:
            raise RealNodeError(
                f"`{' '.join(command)}` in the node's mount namespace: {result.stderr}"
            )


def _containerd(node_dir: Path, net: NodeNet, sandbox_image: str) -> Path:
    cni_conf = node_dir / "cni"
    cni_conf.mkdir(exist_ok=True)
    conflist = {
        "cniVersion": "0.4.0",
        "name": f"marfleet-{net.cluster}",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": net.pod_subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(node_dir / "cni-ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    (cni_conf / "10-marfleet.conflist").write_text(json.dumps(conflist, indent=2))
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    config = f"""version = 2
root = "{node_dir / "containerd-root"}"
state = "{node_dir / "containerd-state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.internal.v1.opt", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{containerd_socket(node_dir)}"
[{cri}]
  sandbox_image = "{sandbox_image}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_cdi = false
  # without CAP_SYS_RESOURCE here, oom_score_adj cannot go below containerd's own
  restrict_oom_score_adj = true
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  BinaryName = "/usr/sbin/runc"
[{cri}.cni]
  bin_dir = "{CNI_DIR}"
  conf_dir = "{cni_conf}"
"""
    path = node_dir / "containerd.toml"
    path.write_text(config)
    return path


def _kubelet_config(cluster: str, node_dir: Path, net: NodeNet) -> Path:
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{cgroup_name(cluster)}",
        "failCgroupV1": False,
        "containerRuntimeEndpoint": f"unix://{containerd_socket(node_dir)}",
        "address": net.node_ip,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        # reachable only on the node's veth; the apiserver has no kubelet client certificate
        "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
        "authorization": {"mode": "AlwaysAllow"},
        "clusterDomain": "cluster.local",
        "clusterDNS": [CLUSTER_DNS_IP],
        "failSwapOn": False,
        # the host's resolver is not reachable from pods and must never be used: pods with
        # dnsPolicy Default (CoreDNS itself) get no nameserver, the others only cluster DNS
        "resolvConf": "",
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "maxPods": 30,
        "serializeImagePulls": False,
        "protectKernelDefaults": False,
        "rotateCertificates": False,
    }
    path = node_dir / "kubelet.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def _kube_proxy_config(node_dir: Path, net: NodeNet, kubeconfig: Path) -> Path:
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "hostnameOverride": NODE_NAME,
        "bindAddress": net.node_ip,
        "clusterCIDR": net.pod_subnet,
        "metricsBindAddress": "127.0.0.1:10249",
        "healthzBindAddress": "127.0.0.1:10256",
        # zero: leave the (host-wide) conntrack table size and timeouts as they are
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    }
    path = node_dir / "kube-proxy.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def _wait_for(check: Callable[[], bool], deadline: float, what: str) -> None:
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise RealNodeError(f"timed out waiting for {what}")
