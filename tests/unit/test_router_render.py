"""What the operator renders around the router: availability and discovery of its pods."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from marfleet.operator import labels, render, spec

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "resnet50-canary.yaml"
CTX = render.RenderContext(default_image="img")


def objects() -> dict[tuple[str, str], dict[str, Any]]:
    isvc = next(d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d["kind"] == spec.KIND)
    desired = render.render(spec.parse(isvc), CTX)
    return {(o["kind"], o["metadata"]["name"]): o for o in desired.objects}


def test_router_pods_keep_one_up_through_disruptions() -> None:
    pdb = objects()[("PodDisruptionBudget", "resnet50-router")]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == {
        labels.ISVC: "resnet50",
        labels.COMPONENT: labels.ROUTER,
    }


def test_a_headless_service_lists_every_router_pod_for_metrics() -> None:
    service = objects()[("Service", "resnet50-router")]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {labels.ISVC: "resnet50", labels.COMPONENT: "router"}
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8082, "targetPort": "metrics", "protocol": "TCP"}
    ]
    assert labels.SCRAPE not in service["metadata"]["labels"]  # scraped once, via the endpoint
