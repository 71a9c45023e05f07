"""One local Kubernetes control plane: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and KWOK, all on loopback with free ports, state in one directory.

Everything a running cluster needs to be found again (ports, pids, tokens) is written to
that directory, so `make cluster-down` in another process tears down exactly what
`make cluster-up` started, and two clusters never share anything but the binaries.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from e2e.support import free_port

from . import dns, nodenet, pki, realnode
from .toolchain import KUBERNETES, KWOK, etcd_binary, require_built

DATA_DIR = Path(__file__).resolve().parent
NODES_FILE = DATA_DIR / "nodes.yaml"
STAGES_FILE = DATA_DIR / "kwok-stages.yaml"
CLUSTERS_ROOT = Path(os.environ.get("MARFLEET_CLUSTERS", "/tmp/marfleet-clusters"))
BASE_CPU_NODES = 2
"""CPU nodes in nodes.yaml; the scale profile (`cpu_nodes`) adds more of the same shape."""
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"


@dataclass
class ClusterState:
    """What is written to <state dir>/cluster.json."""

    name: str
    apiserver_port: int
    etcd_port: int
    etcd_peer_port: int
    etcd_data: str
    host: str = "127.0.0.1"  # where clients reach the apiserver; a real node's uplink if any
    real_node: bool = False
    cpu_nodes: int = BASE_CPU_NODES
    pids: dict[str, int] = field(default_factory=dict)
    binaries: dict[str, str] = field(default_factory=dict)


class ClusterError(RuntimeError):
    pass


class LocalCluster:
    def __init__(
        self,
        name: str,
        root: Path = CLUSTERS_ROOT,
        real_node: bool = False,
        cpu_nodes: int = BASE_CPU_NODES,
    ) -> None:
        """cpu_nodes: simulated CPU nodes (16 CPUs, 110 pods each); more than nodes.yaml's two
        is the scale profile, e.g. 50 nodes for 1,000 InferenceServices. KWOK nodes cost
        a Node object and a Lease renewal each, no process."""
        if cpu_nodes < BASE_CPU_NODES:
            raise ClusterError(f"cpu_nodes must be at least {BASE_CPU_NODES}, got {cpu_nodes}")
        self.name = name
        self.real_node = real_node
        self.cpu_nodes = cpu_nodes
        self.dir = root / name
        self.state_file = self.dir / "cluster.json"

    # ----- paths and credentials -----
    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def state(self) -> ClusterState:
        return ClusterState(**json.loads(self.state_file.read_text()))

    @property
    def server(self) -> str:
        state = self.state
        return f"https://{state.host}:{state.apiserver_port}"

    @property
    def credentials(self) -> pki.Credentials:
        return pki.load(self.dir / "pki")

    def env(self) -> dict[str, str]:
        """Environment for a subprocess that should talk to this cluster."""
        path = f"{KUBERNETES.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PATH": path}

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(KUBERNETES.path("kubectl")), "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def service_account_kubeconfig(
        self, namespace: str, service_account: str, path: Path, duration: str = "12h"
    ) -> Path:
        """Write a kubeconfig whose only credential is a fresh token of the ServiceAccount."""
        token = self.kubectl(
            "create", "token", service_account, "-n", namespace, "--duration", duration
        ).stdout.strip()
        config = json.loads(self.kubeconfig.read_text())
        config["users"] = [{"name": service_account, "user": {"token": token}}]
        for context in config["contexts"]:
            context["context"]["user"] = service_account
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config, indent=2))
        path.chmod(0o600)
        return path

    # ----- lifecycle -----
    def is_running(self) -> bool:
        if not self.state_file.exists():
            return False
        state = self.state
        return bool(state.pids) and all(
            _alive(pid, state.binaries[n]) for n, pid in state.pids.items()
        )

    def up(self, timeout: float = 90) -> None:
        """Start the cluster and return once every node (simulated, and the real one) is Ready
        and, with a real node, cluster DNS answers there."""
        require_built()
        if self.real_node:
            realnode.require_tools()
            timeout = max(timeout, 180)
        if self.is_running():
            return
        if self.dir.exists():
            self.down()
        self.dir.mkdir(parents=True)
        net = nodenet.create(self.name) if self.real_node else None
        shm = Path("/dev/shm")
        etcd_root = shm if shm.is_dir() and os.access(shm, os.W_OK) else self.dir
        state = ClusterState(
            name=self.name,
            apiserver_port=free_port(),
            etcd_port=free_port(),
            etcd_peer_port=free_port(),
            etcd_data=str(etcd_root / f"marfleet-etcd-{self.name}-{os.getpid()}"),
            host=net.host_ip if net else "127.0.0.1",
            real_node=net is not None,
            cpu_nodes=self.cpu_nodes,
        )
        self._save(state)
        creds = pki.generate(self.dir / "pki", extra_ips=[net.host_ip] if net else ())
        self._write_kubeconfig(self.kubeconfig, state, creds, "marfleet-admin")
        deadline = time.monotonic() + timeout
        try:
            self._start(state, "etcd", self._etcd_command(state))
            self._start(state, "kube-apiserver", self._apiserver_command(state, creds))
            self._wait_ready(creds, deadline)
            for component in ("kube-controller-manager", "kube-scheduler", "kwok"):
                user = {"kwok": "kwok"}.get(component, f"system:{component}")
                config = self.dir / f"{component}.kubeconfig"
                self._write_kubeconfig(config, state, creds, user)
                self._start(state, component, self._component_command(component, config, creds))
            self.kubectl("apply", "-f", str(NODES_FILE))
            if self.cpu_nodes > BASE_CPU_NODES:
                extra = [cpu_node(i) for i in range(BASE_CPU_NODES + 1, self.cpu_nodes + 1)]
                self.kubectl("apply", "-f", "-", input="\n".join(map(json.dumps, extra)))
            if net:
                realnode.start(
                    self.name,
                    self.dir / "node",
                    net,
                    lambda user: self._write_kubeconfig(
                        self.dir / f"{user.replace(':', '-')}.kubeconfig", state, creds, user
                    ),
                    lambda name, command, wrap: self._start(state, name, command, wrap),
                    deadline,
                )
                dns.deploy(self)
            self._wait_nodes_ready(deadline)
            if net:
                dns.wait_until_answering(self, net, deadline)
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        """Stop every process this cluster started (by pid) and remove its state. A real node
        goes first: its pods' open watches (CoreDNS's) would hold the apiserver's shutdown."""
        realnode.teardown(self.name)
        if self.state_file.exists():
            state = self.state
            for name, pid in reversed(list(state.pids.items())):
                _stop(pid, state.binaries.get(name, ""))
            shutil.rmtree(state.etcd_data, ignore_errors=True)
        nodenet.delete(self.name)
        shutil.rmtree(self.dir, ignore_errors=True)

    # ----- internals -----
    def _save(self, state: ClusterState) -> None:
        self.state_file.write_text(json.dumps(asdict(state), indent=2))

    def _start(
        self, state: ClusterState, name: str, command: Sequence[str], wrap: Sequence[str] = ()
    ) -> None:
        """wrap: a prefix that execs into command (nsenter), so the pid is command's."""
        log = open(self.dir / f"{name}.log", "wb")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            [*wrap, *command],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.dir,
        )
        log.close()
        state.pids[name] = proc.pid
        state.binaries[name] = command[0]
        self._save(state)
        time.sleep(0.2)
        # a wrapper may not have exec'd yet on a busy machine; until it has, the pid does
        # not look like ours and a liveness check would wrongly call it dead
        deadline = time.monotonic() + 10
        while wrap and proc.poll() is None and not _alive(proc.pid, command[0]):
            if time.monotonic() > deadline:
                raise ClusterError(f"{name} did not start in 10s: see {self.dir / name}.log")
            time.sleep(0.05)
        if proc.poll() is not None:
            raise ClusterError(f"{name} exited at start: see {self.dir / (name + '.log')}")

    def _etcd_command(self, state: ClusterState) -> list[str]:
        client = f"http://127.0.0.1:{state.etcd_port}"
        peer = f"http://127.0.0.1:{state.etcd_peer_port}"
        return [
            str(etcd_binary()),
            "--name",
            "local",
            "--data-dir",
            state.etcd_data,
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"local={peer}",
            "--quota-backend-bytes",
            str(4 << 30),
        ]

    def _apiserver_command(self, state: ClusterState, creds: pki.Credentials) -> list[str]:
        return [
            str(KUBERNETES.path("kube-apiserver")),
            f"--etcd-servers=http://127.0.0.1:{state.etcd_port}",
            f"--bind-address={state.host}",
            f"--advertise-address={state.host}",
            f"--secure-port={state.apiserver_port}",
            f"--tls-cert-file={creds.serving_cert}",
            f"--tls-private-key-file={creds.serving_key}",
            f"--client-ca-file={creds.ca_cert}",
            f"--token-auth-file={creds.token_file}",
            "--authorization-mode=Node,RBAC",
            f"--service-account-key-file={creds.sa_pub}",
            f"--service-account-signing-key-file={creds.sa_key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # pods on a real node reach the apiserver through the kubernetes Service, and
            # logs/exec reach its kubelet by address (its name resolves nowhere)
            *(
                ["--kubelet-preferred-address-types=InternalIP"]
                if state.real_node
                else ["--endpoint-reconciler-type=none"]
            ),
            "--allow-privileged=true",
            f"--cert-dir={self.dir / 'apiserver-certs'}",
            # the aggregation layer (custom.metrics.k8s.io from prometheus-adapter); the
            # apiserver is a host process and cannot reach ClusterIPs, so it dials endpoints
            f"--requestheader-client-ca-file={creds.front_proxy_ca_cert}",
            f"--requestheader-allowed-names={pki.FRONT_PROXY_CLIENT}",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={creds.front_proxy_client_cert}",
            f"--proxy-client-key-file={creds.front_proxy_client_key}",
            "--enable-aggregator-routing=true",
            # Debian's etcd 3.4.23 cannot answer watch progress requests, so streamed lists
            # fail late and KWOK saw new pods only after a relist (20-40 s); refusing the
            # streaming mode up front makes clients fall back to plain list+watch at once.
            "--feature-gates=WatchList=false",
        ]

    def _component_command(
        self, component: str, kubeconfig: Path, creds: pki.Credentials
    ) -> list[str]:
        if component == "kwok":
            return [
                str(KWOK.path("kwok")),
                f"--kubeconfig={kubeconfig}",
                f"--config={STAGES_FILE}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                f"--cidr={POD_CIDR}",
                "--node-ip=10.0.0.1",
                "--node-lease-duration-seconds=40",
                f"--server-address=127.0.0.1:{free_port()}",
            ]
        common = [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}",
            # each controller fetches its own credentials at start: at the default 20 QPS the
            # last ones (replicaset among them) start 4 s late; the scheduler binds one pod per
            # request, so at its default 50 QPS 1,000 new pods (the scale profile) wait 20 s
            "--kube-api-qps=200",
            "--kube-api-burst=400",
        ]
        if component == "kube-scheduler":
            return [str(KUBERNETES.path(component)), *common]
        # The HPA controller syncs every 5 s, not 15: tests and the scenario wait for its
        # decisions, and a handful of HPAs cost it nothing. The scale profile keeps the
        # default, so a thousand HPAs do not load the shared CPUs the operator is measured on.
        hpa_sync = (
            []
            if self.cpu_nodes > BASE_CPU_NODES
            else ["--horizontal-pod-autoscaler-sync-period=5s"]
        )
        return [
            str(KUBERNETES.path(component)),
            *common,
            *hpa_sync,
            f"--service-account-private-key-file={creds.sa_key}",
            f"--root-ca-file={creds.ca_cert}",
            "--use-service-account-credentials=true",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--cert-dir={self.dir / 'kcm-certs'}",
        ]

    def _write_kubeconfig(
        self, path: Path, state: ClusterState, creds: pki.Credentials, user: str
    ) -> Path:
        ca = base64.b64encode(creds.ca_cert.read_bytes()).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": self.name,
                    "cluster": {
                        "server": f"https://{state.host}:{state.apiserver_port}",
                        "certificate-authority-data": ca,
                    },
                }
            ],
            "users": [{"name": user, "user": {"token": creds.tokens[user]}}],
            "contexts": [{"name": self.name, "context": {"cluster": self.name, "user": user}}],
            "current-context": self.name,
        }
        path.write_text(json.dumps(config, indent=2))
        path.chmod(0o600)
        return path

    def _wait_ready(self, creds: pki.Credentials, deadline: float) -> None:
        context = ssl.create_default_context(cafile=str(creds.ca_cert))
        request = urllib.request.Request(
            f"{self.server}/readyz",
            headers={"Authorization": f"Bearer {creds.tokens['marfleet-admin']}"},
        )
        last = ""
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                with urllib.request.urlopen(request, context=context, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError) as error:
                last = str(error)
            time.sleep(0.25)
        raise ClusterError(f"kube-apiserver not ready in time ({last}); see {self.dir}/*.log")

    def _wait_nodes_ready(self, deadline: float) -> None:
        expected = self._expected_nodes()
        expected |= {cpu_node_name(i) for i in range(1, self.state.cpu_nodes + 1)}
        if self.state.real_node:
            expected.add(realnode.NODE_NAME)
        while time.monotonic() < deadline:
            self._check_alive()
            result = self.kubectl("get", "nodes", "-o", "json", check=False)
            if result.returncode == 0:
                ready = {
                    n["metadata"]["name"]
                    for n in json.loads(result.stdout)["items"]
                    if any(
                        c["type"] == "Ready" and c["status"] == "True"
                        for c in n.get("status", {}).get("conditions", [])
                    )
                }
                if expected <= ready:
                    return
            time.sleep(0.25)
        raise ClusterError(f"nodes {sorted(expected)} not Ready in time; see {self.dir}/kwok.log")

    @staticmethod
    def _expected_nodes() -> set[str]:
        text = NODES_FILE.read_text()
        return {
            line.split(":", 1)[1].strip()
            for line in text.splitlines()
            if line.startswith("  name:")
        }

    def _check_alive(self) -> None:
        state = self.state
        for name, pid in state.pids.items():
            if not _alive(pid, state.binaries[name]):
                raise ClusterError(f"{name} died: see {self.dir / (name + '.log')}")


def cpu_node_name(index: int) -> str:
    return f"cpu-node-{index}"


def cpu_node(index: int) -> dict[str, object]:
    """One more simulated CPU node, shaped like nodes.yaml's."""
    name = cpu_node_name(index)
    resources = {"cpu": "16", "memory": "64Gi", "pods": "110"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            },
        },
        "status": {"capacity": resources, "allocatable": resources},
    }


def _alive(pid: int, binary: str) -> bool:
    """True when pid is still the process we started (guards against pid reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return cmdline == binary and stat.rsplit(")", 1)[1].split()[0] != "Z"


def _stop(pid: int, binary: str, grace: float = 10) -> None:
    if _alive(pid, binary):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _alive(pid, binary):
            time.sleep(0.05)
        if _alive(pid, binary):
            os.kill(pid, signal.SIGKILL)
        while _alive(pid, binary):
            time.sleep(0.05)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)  # it is exiting: reap it when this process is its parent
