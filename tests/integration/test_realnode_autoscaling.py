"""An HPA as the operator renders it scales a Deployment on the real node from Prometheus data:
a pod exports a growing marfleet_requests_total, Prometheus finds it by its scrape
annotations, prometheus-adapter serves the chart's requests-per-second metric through the
aggregation layer, and the controller-manager's HPA controller acts on it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from marfleet.operator import render, spec

from e2e import images
from e2e.localcluster import LocalCluster, realnode
from e2e.prometheus.adapter import API_SERVICE, CustomMetrics
from e2e.support import wait_for
from tests.realnode import SharedRealNode

pytestmark = pytest.mark.slow

NAMESPACE = "default"
METRIC = render.HPA_METRICS["requestsPerSecond"]
PER_SECOND = 10  # what each pod's counter grows by
# busybox httpd serves the file the loop rewrites (renamed into place, so never half-written)
COUNTER = (
    "mkdir -p /srv && busybox httpd -p {port} -h /srv && n=0 && while true; do"
    " n=$((n + {step}));"
    ' echo "marfleet_requests_total{{model=\\"m\\",version=\\"1\\",'
    'variant=\\"main\\",code=\\"200\\"}} $n"'
    " > /srv/.metrics && mv /srv/.metrics /srv/metrics; sleep 1; done"
)


def isvc() -> spec.InferenceService:
    return spec.parse(
        {
            "metadata": {"name": "counter", "namespace": NAMESPACE, "uid": "u", "generation": 1},
            "spec": {
                "variants": [{"name": "main", "model": {"uri": "https://h/m.mar"}}],
                "autoscaling": {
                    "metric": "requestsPerSecond",
                    "minReplicas": 1,
                    "maxReplicas": 3,
                    "targetPerReplica": 2,
                },
            },
        }
    )


def deployment(name: str, image: str) -> dict[str, Any]:
    port = render.PORTS["metrics"]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": render.SCRAPE_ANNOTATIONS},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": realnode.NODE_NAME},
                    "containers": [
                        {
                            "name": "counter",
                            "image": image,
                            "imagePullPolicy": "Never",
                            "command": ["sh", "-c", COUNTER.format(port=port, step=PER_SECOND)],
                            "ports": [{"name": "metrics", "containerPort": port}],
                        }
                    ],
                },
            },
        },
    }


def quantity(text: str) -> float:
    """The custom metrics API's values: plain or milli (`9866m`)."""
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


@pytest.fixture(scope="module")
def cluster(real_node: SharedRealNode) -> Iterator[LocalCluster]:
    local = real_node.with_images(images.base())
    yield local
    if real_node.up:  # the modules after this one share the node
        service = isvc()
        hpa = render.hpa(service, service.variants[0])
        local.kubectl("delete", "hpa", hpa["metadata"]["name"], "--wait=false", check=False)
        target = hpa["spec"]["scaleTargetRef"]["name"]
        local.kubectl("delete", "deployment", target, "--wait=false", check=False)


def test_hpa_scales_a_real_deployment_from_prometheus(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    service = isvc()
    hpa = render.hpa(service, service.variants[0])
    del hpa["metadata"]["ownerReferences"]  # no InferenceService (nor operator) here
    target = hpa["spec"]["scaleTargetRef"]["name"]
    with CustomMetrics(cluster, tmp_path / "metrics") as metrics:
        cluster.kubectl(
            "apply", "-f", "-", input=yaml.safe_dump(deployment(target, images.base().ref))
        )
        cluster.kubectl("rollout", "status", f"deployment/{target}", "--timeout=90s", timeout=100)

        def served() -> list[float]:
            result = cluster.kubectl(
                "get",
                "--raw",
                f"/apis/custom.metrics.k8s.io/v1beta1/namespaces/{NAMESPACE}/pods/*/{METRIC}",
                check=False,
            )
            if result.returncode != 0:
                return []
            values = [quantity(item["value"]) for item in json.loads(result.stdout)["items"]]
            return values if values and all(v > 0 for v in values) else []

        try:
            values = wait_for(served, 60, f"{METRIC} from the custom metrics API")
        except AssertionError as error:
            raise AssertionError(f"{error}\nadapter log:\n{metrics.adapter_log_tail()}") from None
        assert all(v <= PER_SECOND * 1.5 for v in values), values

        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(hpa))

        def current_value() -> float:
            status = json.loads(
                cluster.kubectl("get", "hpa", hpa["metadata"]["name"], "-o", "json").stdout
            ).get("status", {})
            for metric in status.get("currentMetrics") or ():
                if metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == METRIC:
                    return quantity(metric["pods"]["current"]["averageValue"])
            return 0.0

        wait_for(current_value, 60, "the HPA to report the current requests per second")

        def replicas() -> bool:
            result = cluster.kubectl(
                "get", "deployment", target, "-o", "jsonpath={.status.readyReplicas}"
            )
            return result.stdout == str(service.autoscaling.max_replicas)

        wait_for(replicas, 60, f"{target} to scale up to {service.autoscaling.max_replicas}")
    gone = cluster.kubectl("get", "apiservice", API_SERVICE, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr, gone.stdout
