"""The router in front of real model servers: two `marfleet serve` processes serving two
versions of a model (archives made by the real torch-model-archiver from random-weight
TinyMLPs with different seeds), split 90/10 by a real `marfleet router` on loopback."""

from __future__ import annotations

import http.client
import json
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
import tritonclient.grpc as triton_grpc
from marfleet.runtime.server.protos import inference_pb2 as ts_pb2

from e2e.bench.procs import free_port
from e2e.bench.router_procs import Client, metric, router
from tests.models import TinyMLP, build, write_torchscript
from tests.serving import Server, archive, serve

pytestmark = pytest.mark.slow

HANDLER = Path(__file__).parent / "server_handlers" / "mlp.py"
ROW = [0.5, -1.0, 2.0, 0.25]
SEEDS = {"1.0": 1, "2.0": 2}
VERSIONS = {"stable": "1.0", "canary": "2.0"}
CORS = {"cors_allowed_origin": "https://app.example", "cors_allowed_methods": "GET, POST"}


def scores(version: str) -> list[float]:
    with torch.no_grad():
        out: list[float] = build(TinyMLP, SEEDS[version])(torch.tensor([ROW])).tolist()[0]
    return out


def start(root: Path, version: str) -> Iterator[Server]:
    store = root / f"store-{version}"
    store.mkdir()
    weights = write_torchscript(root, TinyMLP, seed=SEEDS[version], name=f"mlp-{version}.pt")
    archive(store, "mlp", HANDLER, version=version, serialized_file=weights)
    properties = {"worker_threads": "1", "default_workers_per_model": "1", **CORS}
    with serve(store, root / f"run-{version}", models=["mlp.mar"], properties=properties) as srv:
        yield srv


@pytest.fixture(scope="module")
def stable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from start(tmp_path_factory.mktemp("router-serve"), "1.0")


@pytest.fixture(scope="module")
def canary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from start(tmp_path_factory.mktemp("router-serve"), "2.0")


def test_real_model_servers_split_90_10_and_each_answers_with_its_version(
    stable: Server, canary: Server
) -> None:
    backends = {"stable": stable.inference, "canary": canary.inference}
    expected = {"stable": scores("1.0"), "canary": scores("2.0")}
    assert expected["stable"] != pytest.approx(expected["canary"], abs=1e-3)
    body = json.dumps(ROW).encode()
    with router(backends, "--weights", "stable=90,canary=10") as proc:
        client = Client(proc.url)
        seen = []
        for _ in range(1_000):
            status, headers, data = client.request(
                "POST", "/predictions/mlp", body, {"content-type": "application/json"}
            )
            assert status == 200, data
            variant = headers["x-marfleet-variant"]
            assert json.loads(data) == pytest.approx(expected[variant], abs=1e-5)
            # The server names the version that answered, and the router keeps the header.
            assert headers["x-marfleet-model-version"] == VERSIONS[variant]
            seen.append(variant)
        # KServe v2 and versioned TorchServe paths pass through as well.
        v2 = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}
        status, headers, data = client.request(
            "POST",
            "/v2/models/mlp/infer",
            json.dumps(v2).encode(),
            {"content-type": "application/json"},
        )
        assert status == 200, data
        assert json.loads(data)["model_name"] == "mlp"
        status, headers, _ = client.request("GET", "/v2/models/mlp")
        assert status == 200
        status, headers, data = client.request("POST", "/predictions/mlp/9.9", body)
        assert status == 404 and json.loads(data)["code"] == 404  # the runtime's own answer
        with urllib.request.urlopen(proc.metrics_url) as response:
            text = response.read().decode()
    assert Counter(seen) == {"stable": 900, "canary": 100}
    assert metric(text, "marfleet_router_requests_total", variant="canary", code_class="2xx") >= 100
    assert metric(text, "marfleet_router_requests_total", code_class="4xx") == 1
    # Every inference answer is counted under the version that gave it (what a rollout judges
    # on); the metadata call and the unknown version's 404 named none.
    named = sum(
        metric(text, "marfleet_router_requests_total", variant=variant, version=version)
        for variant, version in VERSIONS.items()
    )
    assert named == 1_001
    assert metric(text, "marfleet_router_requests_total", version="") == 2


def test_grpc_through_the_router_splits_80_20_and_sticks_like_http(
    stable: Server, canary: Server
) -> None:
    backends = {"stable": stable.inference, "canary": canary.inference}
    grpc_port = free_port()
    args = ["--weights", "stable=80,canary=20", "--sticky-header", "x-user"]
    args += ["--grpc-port", str(grpc_port)]
    args += [f"--grpc-backend=stable={stable.grpc}", f"--grpc-backend=canary={canary.grpc}"]
    request = ts_pb2.PredictionsRequest(model_name="mlp", input={"body": json.dumps(ROW).encode()})
    expected = {"stable": scores("1.0"), "canary": scores("2.0")}
    with router(backends, *args) as proc, grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
        predict = ch.unary_unary(
            "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions",
            request_serializer=ts_pb2.PredictionsRequest.SerializeToString,
            response_deserializer=ts_pb2.PredictionResponse.FromString,
        )
        seen = []
        for _ in range(1_000):
            reply, call = predict.with_call(request, timeout=30)
            variant = dict(call.initial_metadata())["x-marfleet-variant"]
            assert json.loads(reply.prediction) == pytest.approx(expected[variant], abs=1e-5)
            seen.append(variant)
        share = Counter(seen)["canary"] / len(seen)
        assert 0.18 <= share <= 0.22, Counter(seen)
        # The sticky key pins a user to one variant over HTTP and gRPC alike.
        client = Client(proc.url)
        for user in ("alice", "bob", "carol", "dave", "erin", "frank"):
            _, headers, _ = client.request(
                "POST", "/predictions/mlp", json.dumps(ROW).encode(), {"x-user": user}
            )
            _, call = predict.with_call(request, metadata=[("x-user", user)], timeout=30)
            assert (
                dict(call.initial_metadata())["x-marfleet-variant"] == headers["x-marfleet-variant"]
            )
        # tritonclient's v2 gRPC calls pass through unchanged; errors keep their code.
        triton = triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert triton.is_server_live()
        tensor = triton_grpc.InferInput("input-0", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.array([ROW], dtype=np.float32))
        result = triton.infer("mlp", [tensor])
        values = result.as_numpy(result.get_response().outputs[0].name)
        assert values is not None and values.shape[-1] == 3
        with pytest.raises(grpc.RpcError) as error:
            predict(ts_pb2.PredictionsRequest(model_name="nope"), timeout=30)
        assert (
            error.value.code() == grpc.StatusCode.INTERNAL
        )  # TorchServe 0.12 code, passed through
        with urllib.request.urlopen(proc.metrics_url) as response:
            text = response.read().decode()
    assert metric(text, "marfleet_router_requests_total", variant="canary", code_class="2xx") >= 180
    assert metric(text, "marfleet_router_requests_total", code_class="5xx") >= 1  # INTERNAL


def test_the_routers_own_answers_carry_the_servers_cors_headers(stable: Server) -> None:
    """A browser reads a router's 502 like any answer: the router sends the CORS headers the
    servers send (the operator gives it their TS_CORS_* values), and a server's answer passes
    with its own, once."""
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in CORS.items()]
    expected = {
        "access-control-allow-origin": "https://app.example",
        "access-control-allow-methods": "GET, POST",
    }
    dead = f"http://127.0.0.1:{free_port()}"
    for backend, status in ((stable.inference, 200), (dead, 502)):
        with router({"only": backend}, "--weights", "only=100", *flags) as proc:
            connection = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=30)
            connection.request(
                "POST", "/predictions/mlp", json.dumps(ROW), {"content-type": "application/json"}
            )
            response = connection.getresponse()
            response.read()
            connection.close()
            assert response.status == status
            for name, value in expected.items():
                assert response.headers.get_all(name) == [value], (status, name)
