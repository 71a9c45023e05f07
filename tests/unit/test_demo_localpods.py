"""The demo's translation of a Pod into local commands, on pods the real renderers produce."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from marfleet.operator import render, spec

from e2e.demo.localpods import LocalPodError, local_pod

CANARY = Path(__file__).resolve().parents[2] / "examples" / "demo" / "canary.yaml"
CTX = render.RenderContext(default_image="registry.example/marfleet:1")
MARFLEET = Path("/venv/bin/marfleet")
ROOT = Path("/state/pods/p")


def rendered() -> dict[tuple[str, str], Any]:
    isvc = next(d for d in yaml.safe_load_all(CANARY.read_text()) if d["kind"] == spec.KIND)
    isvc["metadata"].update(uid="uid-1", generation=1)
    desired = render.render(spec.parse(isvc), CTX)
    return {(o["kind"], o["metadata"]["name"]): o for o in desired.objects}


def scheduled(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    """The Pod a ReplicaSet and the scheduler would make of the Deployment's template."""
    template = deployment["spec"]["template"]
    return {
        "metadata": {**template["metadata"], "name": name, "namespace": "demo"},
        "spec": {**template["spec"], "nodeName": "cpu-node-1"},
    }


def server_pod() -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
    objects = rendered()
    pod = scheduled(objects[("Deployment", "classifier-stable")], "classifier-stable-abc")
    config_map = objects[("ConfigMap", "classifier-stable")]
    return pod, {"classifier-stable": config_map["data"]}


def test_the_fetch_init_container_writes_into_the_local_model_store() -> None:
    pod, config_maps = server_pod()
    local = local_pod(pod, config_maps, ROOT, MARFLEET)
    (fetch,) = local.init_containers
    uri = "file:///tmp/marfleet-demo/models/1.0/classifier.mar"
    assert fetch.argv == (str(MARFLEET), "fetch", uri, str(ROOT / "volumes" / "model-store"))
    assert ROOT / "volumes" / "model-store" in local.directories


def test_the_server_reads_its_config_map_from_a_local_file() -> None:
    pod, config_maps = server_pod()
    local = local_pod(pod, config_maps, ROOT, MARFLEET)
    server = local.container("server")
    config = ROOT / "volumes" / "config" / "config.properties"
    assert server.argv[:2] == (str(MARFLEET), "serve")
    assert server.argv[server.argv.index("--ts-config") + 1] == str(config)
    assert local.volume_files[config] == config_maps["classifier-stable"]["config.properties"]
    assert server.env["MARFLEET_VARIANT"] == "stable"
    assert server.workdir == ROOT / "volumes" / "tmp"  # workingDir /tmp is the tmp volume
    assert (local.name, local.namespace, local.node) == (
        "classifier-stable-abc",
        "demo",
        "cpu-node-1",
    )


def test_model_servers_get_no_token_and_routers_their_own_service_account() -> None:
    objects = rendered()
    server, config_maps = server_pod()
    assert local_pod(server, config_maps, ROOT, MARFLEET).service_account == ""
    router = scheduled(objects[("Deployment", "classifier-router")], "classifier-router-xyz")
    local = local_pod(router, {}, ROOT, MARFLEET)
    assert local.service_account == "classifier-router"
    container = local.container("router")
    assert container.argv[:2] == (str(MARFLEET), "router")
    assert container.env["MARFLEET_NAMESPACE"] == "demo"
    variants = {b["variant"] for b in json.loads(container.env["MARFLEET_ROUTER_BACKENDS"])}
    assert variants == {"stable", "canary"}


def test_a_container_without_command_runs_the_image_entrypoint() -> None:
    pod = {
        "metadata": {"name": "op", "namespace": "ns"},
        "spec": {"containers": [{"name": "operator", "args": ["operator"]}]},
    }
    local = local_pod(pod, {}, ROOT, MARFLEET)
    assert local.container("operator").argv == (str(MARFLEET), "operator")
    assert local.service_account == "default"


@pytest.mark.parametrize(
    ("container", "volumes", "message"),
    [
        ({"name": "c", "command": ["python"]}, [], "only marfleet commands"),
        (
            {"name": "c", "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "s"}}}]},
            [],
            "env K comes from",
        ),
        (
            {
                "name": "c",
                "args": ["serve", "--model-store", "/mnt/pvc/m"],
                "volumeMounts": [{"name": "pvc", "mountPath": "/mnt/pvc"}],
            },
            [{"name": "pvc", "persistentVolumeClaim": {"claimName": "models"}}],
            "cannot run here",
        ),
    ],
    ids=["foreign command", "secret env", "arg on a claim"],
)
def test_what_cannot_run_locally_is_refused_by_name(
    container: dict[str, Any], volumes: list[dict[str, Any]], message: str
) -> None:
    pod = {
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": {"containers": [container], "volumes": volumes},
    }
    with pytest.raises(LocalPodError, match=message):
        local_pod(pod, {}, ROOT, MARFLEET)


def test_a_missing_config_map_is_named() -> None:
    pod, _ = server_pod()
    with pytest.raises(LocalPodError, match="ConfigMap classifier-stable"):
        local_pod(pod, {}, ROOT, MARFLEET)
