"""The real `marfleet operator` at work on a local control plane, so Prometheus has operator
series to scrape: it serves one namespace holding one small InferenceService, without leader
election, its /metrics on a free loopback port."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

from e2e.localcluster import LocalCluster
from e2e.support import Started, free_port, terminate

from .server import Target

CRD = Path(__file__).resolve().parents[2] / "crds" / "inferenceservice.yaml"
CRD_NAME = "inferenceservices.serving.marfleet.io"


def inference_service(namespace: str) -> dict[str, object]:
    """One CPU variant, fixed replicas: the smallest InferenceService that reconciles."""
    return {
        "apiVersion": "serving.marfleet.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "cart", "namespace": namespace},
        "spec": {
            "variants": [
                {
                    "name": "stable",
                    "weight": 100,
                    "model": {"uri": "https://models.example/cart.mar"},
                }
            ],
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
            "autoscaling": {"engine": "none", "minReplicas": 1, "maxReplicas": 1},
        },
    }


class ReconcilingOperator(Started):
    def __init__(self, cluster: LocalCluster, workdir: Path, namespace: str) -> None:
        self.cluster = cluster
        self.workdir = workdir
        self.namespace = namespace
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    def target(self) -> Target:
        labels = {"namespace": "marfleet-system", "pod": "marfleet-operator-0"}
        return Target("marfleet-operator", f"127.0.0.1:{self.port}", labels)

    def metrics_text(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=10).text

    def start(self, timeout: float = 90) -> None:
        self.cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
        self.cluster.kubectl(
            "wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s"
        )
        self.cluster.kubectl("create", "namespace", self.namespace)
        manifest = json.dumps(inference_service(self.namespace))
        self.cluster.kubectl("apply", "-f", "-", input=manifest)
        self.workdir.mkdir(parents=True, exist_ok=True)
        marfleet = Path(sys.executable).with_name("marfleet")
        with (self.workdir / "operator.log").open("wb") as log:
            self._process = subprocess.Popen(
                [
                    str(marfleet),
                    "operator",
                    *("--kubeconfig", str(self.cluster.kubeconfig)),
                    *("--namespace", self.namespace, "--no-leader-election"),
                    *("--host", "127.0.0.1", "--port", str(self.port)),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self._reconciled():
            if self._process.poll() is not None or time.monotonic() > deadline:
                log_text = (self.workdir / "operator.log").read_text()[-2000:]
                self.stop()
                raise RuntimeError(f"the operator did not reconcile {self.namespace}: {log_text}")
            time.sleep(0.5)

    def _reconciled(self) -> bool:
        try:
            text = self.metrics_text()
        except httpx.TransportError:
            return False
        return 'marfleet_operator_reconciles_total{result="success"}' in text

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            terminate(process)
        self.cluster.kubectl(
            "delete", "namespace", self.namespace, "--ignore-not-found", "--wait=false"
        )
