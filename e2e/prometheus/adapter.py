"""The custom metrics pipeline for a local cluster's real node: Debian's Prometheus scrapes the
node's pods that carry `prometheus.io/*` annotations (found by `poddiscovery`, since Debian
builds Prometheus without Kubernetes discovery), prometheus-adapter (built from its Go
module) turns the series into custom.metrics.k8s.io with the chart's rules, and the
controller-manager's HPA controller reads them.

Both are host processes, as the control plane is. The adapter is registered the way it is in
a cluster (APIService, Service, RBAC), except that the Service has no selector: its one
EndpointSlice names the host end of the node's veth, where the adapter listens, because the
apiserver dials endpoints (`--enable-aggregator-routing`) and an EndpointSlice may not hold a
loopback address. Everything this creates in the cluster is deleted by `stop()`, APIService
first, since an unavailable aggregated API stalls namespace deletion and discovery.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from e2e.localcluster import LocalCluster, pki, realnode
from e2e.localcluster.toolchain import PROMETHEUS_ADAPTER
from e2e.support import Started, free_port, terminate, wait_for

from . import chart
from .poddiscovery import PodDiscovery, pod_scrape_job
from .server import LocalPrometheus

NAMESPACE = "monitoring"
ADAPTER = "prometheus-adapter"
PROMETHEUS = "prometheus"
API_GROUP = "custom.metrics.k8s.io"
API_SERVICE = f"v1beta1.{API_GROUP}"


class MetricsPipelineError(RuntimeError):
    pass


def chart_adapter_rules() -> list[dict[str, Any]]:
    """The adapter rules exactly as the chart installs them."""
    objects = chart.template(set_values={"monitoring.prometheusAdapter.enabled": "true"})
    return chart.adapter_rules(objects)


class CustomMetrics(Started):
    """Prometheus scraping the real node's pods and prometheus-adapter serving
    custom.metrics.k8s.io from it, for a running real-node LocalCluster."""

    def __init__(
        self,
        cluster: LocalCluster,
        workdir: Path,
        interval: str = "2s",
        rules: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        self.cluster = cluster
        self.workdir = workdir
        self.interval = interval
        self.rules = rules
        self.discovery: PodDiscovery | None = None
        self.prometheus: LocalPrometheus | None = None
        self._adapter: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        state = self.cluster.state
        if not state.real_node:
            raise MetricsPipelineError(
                f"cluster {self.cluster.name} has no real node: the adapter's EndpointSlice "
                "needs the node's host address (loopback is not allowed there)"
            )
        if PROMETHEUS_ADAPTER.missing():
            raise MetricsPipelineError(
                f"{PROMETHEUS_ADAPTER.path('adapter')} is missing: run `make node-setup`"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        rules = self.rules if self.rules is not None else chart_adapter_rules()
        port = free_port()
        try:
            self._apply(self._access_objects())
            token = self.cluster.kubectl(
                "create", "token", PROMETHEUS, "-n", NAMESPACE, "--duration", "12h"
            ).stdout.strip()
            targets = self.workdir / "pods.json"
            self.discovery = PodDiscovery(
                self.cluster.server,
                self.cluster.credentials.ca_cert,
                token,
                realnode.NODE_NAME,
                targets,
            )
            self.discovery.start()
            self.prometheus = LocalPrometheus(
                self.workdir / "prometheus",
                targets=(),
                interval=self.interval,
                scrape_configs=[pod_scrape_job(targets)],
            )
            self.prometheus.start()
            self._start_adapter(state.host, port, self.prometheus.url, rules)
            self._apply(self._registration_objects(state.host, port))
            wait_for(self._available, 60, f"APIService {API_SERVICE} to be Available")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.cluster.state_file.exists():
            # the APIService first: an unavailable aggregated API stalls namespace deletion;
            # the Service and EndpointSlice go with the namespace
            kubectl = self.cluster.kubectl
            kubectl("delete", "apiservice", API_SERVICE, "--ignore-not-found", check=False)
            access = json.dumps(_list(self._access_objects()))
            kubectl(
                "delete", "-f", "-", "--ignore-not-found", "--wait=false", input=access, check=False
            )
        adapter, self._adapter = self._adapter, None
        if adapter is not None:
            terminate(adapter, grace=10)
        prometheus, self.prometheus = self.prometheus, None
        if prometheus is not None:
            prometheus.stop()
        discovery, self.discovery = self.discovery, None
        if discovery is not None:
            discovery.stop()

    def adapter_log_tail(self, lines: int = 20) -> str:
        path = self.workdir / "adapter.log"
        return "\n".join(path.read_text().splitlines()[-lines:]) if path.exists() else ""

    # ----- internals -----
    def _start_adapter(
        self, host: str, port: int, prometheus_url: str, rules: Sequence[dict[str, Any]]
    ) -> None:
        config = self.workdir / "adapter-config.yaml"
        config.write_text(yaml.safe_dump({"rules": list(rules)}, sort_keys=False))
        cert, key = pki.issue_serving_cert(
            self.cluster.credentials, ADAPTER, [f"DNS:{ADAPTER}.{NAMESPACE}.svc", f"IP:{host}"]
        )
        kubeconfig = self.cluster.service_account_kubeconfig(
            NAMESPACE, ADAPTER, self.workdir / "adapter.kubeconfig"
        )
        log = (self.workdir / "adapter.log").open("wb")
        self._adapter = subprocess.Popen(
            [
                str(PROMETHEUS_ADAPTER.path("adapter")),
                f"--bind-address={host}",
                f"--secure-port={port}",
                f"--tls-cert-file={cert}",
                f"--tls-private-key-file={key}",
                f"--lister-kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                f"--prometheus-url={prometheus_url}",
                f"--config={config}",
                # new pods' series are found within seconds, not the default 10 minutes
                "--metrics-relist-interval=5s",
                "--v=2",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

        def listening() -> bool:
            self._check_adapter()
            try:
                socket.create_connection((host, port), timeout=1).close()
            except OSError:
                return False
            return True

        wait_for(listening, 30, f"prometheus-adapter to listen on {host}:{port}")

    def _check_adapter(self) -> None:
        if self._adapter is not None and self._adapter.poll() is not None:
            raise MetricsPipelineError(f"prometheus-adapter exited:\n{self.adapter_log_tail()}")

    def _available(self) -> bool:
        self._check_adapter()
        result = self.cluster.kubectl("get", "apiservice", API_SERVICE, "-o", "json", check=False)
        if result.returncode != 0:
            return False
        conditions = json.loads(result.stdout).get("status", {}).get("conditions", [])
        return any(c["type"] == "Available" and c["status"] == "True" for c in conditions)

    def _apply(self, objects: Sequence[dict[str, Any]]) -> None:
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(_list(objects)))

    def _access_objects(self) -> list[dict[str, Any]]:
        """Namespace, service accounts and RBAC: the adapter delegates authentication and
        authorization to the apiserver and lists pods; Prometheus discovers pods."""
        return [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
            *(
                {
                    "apiVersion": "v1",
                    "kind": "ServiceAccount",
                    "metadata": {"name": name, "namespace": NAMESPACE},
                }
                for name in (ADAPTER, PROMETHEUS)
            ),
            _cluster_role(f"marfleet-{ADAPTER}", ["nodes", "namespaces", "pods", "services"]),
            _cluster_role(f"marfleet-{PROMETHEUS}", ["pods"]),
            _binding("ClusterRoleBinding", f"marfleet-{ADAPTER}", f"marfleet-{ADAPTER}", ADAPTER),
            _binding(
                "ClusterRoleBinding",
                f"marfleet-{ADAPTER}:system:auth-delegator",
                "system:auth-delegator",
                ADAPTER,
            ),
            _binding(
                "RoleBinding",
                f"marfleet-{ADAPTER}-auth-reader",
                "extension-apiserver-authentication-reader",
                ADAPTER,
                namespace="kube-system",
            ),
            _binding(
                "ClusterRoleBinding", f"marfleet-{PROMETHEUS}", f"marfleet-{PROMETHEUS}", PROMETHEUS
            ),
        ]

    def _registration_objects(self, host: str, port: int) -> list[dict[str, Any]]:
        return [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": ADAPTER, "namespace": NAMESPACE},
                "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port}]},
            },
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": ADAPTER,
                    "namespace": NAMESPACE,
                    "labels": {
                        "kubernetes.io/service-name": ADAPTER,
                        "endpointslice.kubernetes.io/managed-by": "marfleet-e2e",
                    },
                },
                "addressType": "IPv4",
                "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
                "endpoints": [{"addresses": [host], "conditions": {"ready": True}}],
            },
            {
                "apiVersion": "apiregistration.k8s.io/v1",
                "kind": "APIService",
                "metadata": {"name": API_SERVICE},
                "spec": {
                    "group": API_GROUP,
                    "version": "v1beta1",
                    "service": {"name": ADAPTER, "namespace": NAMESPACE, "port": 443},
                    "caBundle": base64.b64encode(
                        self.cluster.credentials.ca_cert.read_bytes()
                    ).decode(),
                    "groupPriorityMinimum": 100,
                    "versionPriority": 100,
                },
            },
        ]


def _list(objects: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "List", "items": list(objects)}


def _cluster_role(name: str, resources: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": [{"apiGroups": [""], "resources": resources, "verbs": ["get", "list", "watch"]}],
    }


def _binding(
    kind: str, name: str, role: str, service_account: str, namespace: str | None = None
) -> dict[str, Any]:
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": metadata,
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role" if kind == "RoleBinding" else "ClusterRole",
            "name": role,
        },
        "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": NAMESPACE}],
    }
