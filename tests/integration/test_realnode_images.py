"""marfleet's own images on the real node: the runtime image serves archives that the real
torch-model-archiver made with this machine's PyTorch (the image has Debian's, an older one);
the operator image runs the operator's and the router's commands without PyTorch. (TorchServe's
MNIST example, a grayscale image handler, is served from the runtime image and compared with
real TorchServe by the real-node scenario, tests/integration/test_realnode_scenario.py.)

Pods run as the operator and the chart run them: a non-root user, a read-only root file
system and an emptyDir at /tmp.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
import torch
from marfleet.operator.render import CONTAINER_SECURITY, POD_SECURITY

from e2e.images import Image, marfleet
from e2e.localcluster import LocalCluster, realnode
from e2e.support import wait_for
from tests.handler_sources import MLP_HANDLER, write_handler
from tests.models import TinyMLP, build, write_eager, write_torchscript
from tests.realnode import SharedRealNode
from tests.serving import archive

pytestmark = pytest.mark.slow

ROW = [1.0, -2.0, 0.5, 3.0]
ON_REAL_NODE = {"kubernetes.io/hostname": realnode.NODE_NAME}
SERVER_CONFIG = """\
inference_address=http://0.0.0.0:8080
management_address=http://0.0.0.0:8081
metrics_address=http://0.0.0.0:8082
disable_token_authorization=true
"""
# Run in the runtime pod: the eager archive loaded and called the way a worker does.
LOAD_EAGER = f"""
import json, os
from pathlib import Path
import torch
from marfleet.runtime.archive.reader import load_archive
from marfleet.runtime.handlers.service import InferenceRequest, ModelService
archive = load_archive(Path("/mnt/models/eager.mar"), Path("/tmp/eager"))
service = ModelService.load(archive.model_dir, gpu_id=None, batch_size=1)
body = json.dumps({ROW}).encode()
(result,) = service.handle([InferenceRequest("r", body, "application/json", {{}}, {{}})])
print(json.dumps({{"torch": torch.__version__, "uid": os.getuid(), "status": result.status,
                  "answer": json.loads(result.body)}}))
"""
# Run in the operator image: every module of the operator and the router imports without torch.
IMPORT_ALL = """
import importlib, importlib.util, json, os, pkgutil, sys
import marfleet.operator, marfleet.runtime.router
names = []
for package in (marfleet.operator, marfleet.runtime.router):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(module.name)
        names.append(module.name)
loaded = [name for name in sys.modules if name.startswith(("torch", "numpy"))]
has_torch = importlib.util.find_spec("torch") is not None
print(json.dumps({"imported": names, "uid": os.getuid(), "torch": has_torch, "loaded": loaded}))
"""


class Node(NamedTuple):
    cluster: LocalCluster
    runtime: Image
    operator: Image


@pytest.fixture(scope="module")
def node(real_node: SharedRealNode) -> Iterator[Node]:
    """The real node holding both images, as built once here: the working tree is shared,
    and a later build could have another key."""
    runtime, operator = marfleet.runtime(), marfleet.operator()
    local = real_node.with_images(runtime, operator)
    yield Node(local, runtime, operator)
    if real_node.up:  # the modules after this one share the node
        local.kubectl("delete", "pod", "serve", "operator", "--wait=false", check=False)
        local.kubectl("delete", "configmap", "models", check=False)


def pod(name: str, containers: list[dict[str, Any]], **spec: Any) -> str:
    """A Pod on the real node whose containers run as the operator's do (read-only root file
    system, no capabilities) with an emptyDir at /tmp."""
    for container in containers:
        container |= {"imagePullPolicy": "Never", "securityContext": CONTAINER_SECURITY}
        container["volumeMounts"] = [
            *container.get("volumeMounts", []),
            {"name": "tmp", "mountPath": "/tmp"},
        ]
    volumes = [{"name": "tmp", "emptyDir": {}}, *spec.pop("volumes", [])]
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeSelector": ON_REAL_NODE,
            "containers": containers,
            "volumes": volumes,
            **spec,
        },
    }
    return json.dumps(manifest)


def make_archives(folder: Path) -> Path:
    """mlp.mar (TorchScript) and eager.mar (model file + state dict) from the real archiver,
    both saved by this machine's PyTorch, plus the server's config, in one folder."""
    store = folder / "store"
    store.mkdir()
    handler = write_handler(folder, "mlp_handler", MLP_HANDLER)
    archive(store, "mlp", handler, serialized_file=write_torchscript(folder, TinyMLP))
    model_file, weights = write_eager(folder, TinyMLP, stem="eager_model")
    archive(store, "eager", handler, serialized_file=weights, model_file=model_file)
    (store / "config.properties").write_text(SERVER_CONFIG)
    return store


def test_runtime_image_serves_archives_made_with_a_newer_torch(node: Node, tmp_path: Path) -> None:
    cluster = node.cluster
    store = make_archives(tmp_path)
    cluster.kubectl("create", "configmap", "models", f"--from-file={store}")
    server = {
        "name": "server",
        "image": node.runtime.ref,
        "workingDir": "/tmp",
        "args": ["serve", "--foreground", "--ts-config", "/mnt/models/config.properties",
                 "--model-store", "/mnt/models",
                 "--models", "mlp=mlp.mar", "eager=eager.mar"],
        "volumeMounts": [{"name": "models", "mountPath": "/mnt/models", "readOnly": True}],
        "readinessProbe": {"httpGet": {"path": "/ping", "port": 8080}, "periodSeconds": 1},
    }  # fmt: skip
    models = {"name": "models", "configMap": {"name": "models"}}
    manifest = pod("serve", [server], securityContext=POD_SECURITY, volumes=[models])
    cluster.kubectl("apply", "-f", "-", input=manifest)
    cluster.kubectl("wait", "--for=condition=Ready", "pod/serve", "--timeout=240s", timeout=250)
    address = cluster.kubectl("get", "pod", "serve", "-o", "jsonpath={.status.podIP}").stdout
    expected = build(TinyMLP)(torch.tensor([ROW]))[0]

    ping = httpx.get(f"http://{address}:8080/ping", timeout=10)
    assert (ping.status_code, ping.json()["status"]) == (200, "Healthy")
    for name in ("mlp", "eager"):
        url = f"http://{address}:8080/predictions/{name}"
        answer = wait_for(partial(_prediction, url), 120, f"an answer from {url}")
        torch.testing.assert_close(torch.tensor(answer["scores"]), expected)

    loaded = json.loads(cluster.kubectl("exec", "serve", "--", "python3", "-c", LOAD_EAGER).stdout)
    assert loaded["torch"].startswith("2.6") and torch.__version__ != loaded["torch"]
    assert (loaded["uid"], loaded["status"]) == (1000, 200)
    torch.testing.assert_close(torch.tensor(loaded["answer"]["scores"]), expected)


def _prediction(url: str) -> Any:
    response = httpx.post(url, json=ROW, timeout=30)
    if response.status_code == 503:  # the worker is still loading the model
        return None
    assert response.status_code == 200, response.text
    return response.json()


def test_operator_image_runs_the_operator_and_router_without_torch(node: Node) -> None:
    cluster, image = node.cluster, node.operator.ref
    containers: list[dict[str, Any]] = [
        {"name": "operator", "image": image, "args": ["operator", "--help"]},
        {"name": "router", "image": image, "args": ["router", "--help"]},
        {"name": "imports", "image": image, "command": ["python3", "-c", IMPORT_ALL]},
    ]
    manifest = pod(
        "operator", containers, restartPolicy="Never", securityContext={"runAsNonRoot": True}
    )
    cluster.kubectl("apply", "-f", "-", input=manifest)

    def finished() -> bool:
        phase = cluster.kubectl("get", "pod", "operator", "-o", "jsonpath={.status.phase}").stdout
        assert phase != "Failed", cluster.kubectl("describe", "pod", "operator").stdout
        return phase == "Succeeded"

    wait_for(finished, 120, "the operator image's pod to finish")
    logs = {
        c["name"]: cluster.kubectl("logs", "operator", "-c", c["name"]).stdout for c in containers
    }
    assert logs["operator"].startswith("usage: marfleet operator")
    assert logs["router"].startswith("usage: marfleet router")
    imports = json.loads(logs["imports"])
    assert "marfleet.operator.app" in imports["imported"]
    assert (imports["uid"], imports["torch"], imports["loaded"]) == (65532, False, [])
