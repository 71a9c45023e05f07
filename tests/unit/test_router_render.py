"""What the operator renders around the router: availability and discovery of its pods."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from marfleet.operator import labels, render, spec

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "resnet50-canary.yaml"
CTX = render.RenderContext(default_image="img")


def example() -> dict[str, Any]:
    isvc: dict[str, Any] = next(
        d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d["kind"] == spec.KIND
    )
    return isvc


def objects(isvc: dict[str, Any] | None = None) -> dict[tuple[str, str], dict[str, Any]]:
    desired = render.render(spec.parse(isvc or example()), CTX)
    return {(o["kind"], o["metadata"]["name"]): o for o in desired.objects}


def router_args(isvc: dict[str, Any]) -> list[str]:
    deployment = objects(isvc)[("Deployment", "resnet50-router")]
    args: list[str] = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


def test_the_router_sends_the_cors_headers_every_variant_sends() -> None:
    isvc = example()
    assert not any(arg.startswith("--cors") for arg in router_args(isvc))
    isvc["spec"].setdefault("runtime", {})["env"] = [
        {"name": "TS_CORS_ALLOWED_ORIGIN", "value": "https://app.example"},
        {"name": "TS_CORS_ALLOWED_METHODS", "value": "GET, POST"},
        {"name": "TS_CORS_ALLOWED_HEADERS", "valueFrom": {"configMapKeyRef": {"name": "c"}}},
    ]
    args = router_args(isvc)
    assert args[args.index("--cors-allowed-origin") + 1] == "https://app.example"
    assert args[args.index("--cors-allowed-methods") + 1] == "GET, POST"
    assert "--cors-allowed-headers" not in args  # not a literal value: the router cannot know it
    # a variant that sends another origin: the router cannot know which one a client expects
    variant = isvc["spec"]["variants"][-1]
    variant.setdefault("runtime", {})["env"] = [
        {"name": "TS_CORS_ALLOWED_ORIGIN", "value": "https://other.example"}
    ]
    args = router_args(isvc)
    assert "--cors-allowed-origin" not in args and "--cors-allowed-methods" in args


def test_the_router_takes_and_waits_for_what_the_largest_variant_does() -> None:
    """A request a variant served alone is not refused once a second variant puts the router
    before it: the router's sizes, timeouts and wait follow the variants' servers."""

    def limits(isvc: dict[str, Any]) -> dict[str, str]:
        args = router_args(isvc)
        return {flag: args[i + 1] for i, flag in enumerate(args) if flag in FOLLOWED}

    isvc = example()
    assert limits(isvc) == {"--response-timeout": "245"}  # the rest are the servers' defaults
    stable, canary = isvc["spec"]["variants"]
    stable.setdefault("runtime", {})["env"] = [
        {"name": "TS_MAX_REQUEST_SIZE", "value": "104857600"},
        {"name": "TS_REQUEST_BODY_TIMEOUT_SECONDS", "value": "90"},
        {"name": "TS_MAX_RESPONSE_SIZE", "valueFrom": {"configMapKeyRef": {"name": "c"}}},
    ]
    stable["runtime"]["responseTimeoutSeconds"] = 300
    canary.setdefault("runtime", {})["env"] = [
        {"name": "TS_MAX_REQUEST_SIZE", "value": "1000"},
        {"name": "TS_MAX_RESPONSE_SIZE", "value": "20000000"},
        {"name": "TS_KEEPALIVE_TIMEOUT_SECONDS", "value": "2.5"},  # below the default: kept
    ]
    assert limits(isvc) == {
        "--max-request-bytes": "104857600",
        "--max-response-bytes": "20000000",  # the reference is the router's to ignore
        "--request-body-timeout": "90",
        "--response-timeout": "605",
    }
    canary["runtime"]["env"].append({"name": "TS_MAX_CONNECTIONS", "value": "many"})
    assert "--max-response-bytes" not in limits(isvc)  # the canary cannot start: defaults


FOLLOWED = {flag for _, flag in render.ROUTER_FOLLOWS} | {"--response-timeout"}


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
