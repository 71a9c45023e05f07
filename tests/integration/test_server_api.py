"""`marfleet serve` as a client sees it: every endpoint, over real sockets, real archives.

One server for the module (token auth on, model API enabled, a 256 KiB request limit), loaded
with archives the real torch-model-archiver made from the test handlers and a random-weight
TorchScript model.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import torch
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton
import tritonclient.utils as triton_utils
from google.protobuf import empty_pb2
from marfleet.runtime.server.protos import inference_pb2 as ts_pb2

from e2e.bench.router_procs import router
from e2e.support import free_port
from tests.integration.server_archives import MLP_TENSORS, build_store
from tests.models import TinyMLP, build
from tests.serving import Server, serve

MAX_REQUEST = 256 * 1024
MAX_HEAD = 16 * 1024
ERROR_KEYS = {"code", "type", "message"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("server-api")
    store = build_store(root)
    properties = {
        "enable_model_api": "true",
        "max_request_size": str(MAX_REQUEST),
        "worker_threads": "1",
        "max_request_head_size": str(MAX_HEAD),
        "max_json_depth": "20",
        "model_metrics_auto_detect": "true",  # the behaviour handler's RowsProcessed
    }
    with serve(
        store, root / "run", models=["echo.mar", "mlp.mar", "stream.mar"], properties=properties
    ) as srv:
        yield srv


def mlp_scores(row: list[float]) -> list[float]:
    with torch.no_grad():
        scores: list[float] = build(TinyMLP)(torch.tensor([row])).tolist()[0]
    return scores


def metric_value(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name} {labels} in /metrics")


# inference API (TorchServe)


def test_ping_is_healthy(server: Server) -> None:
    response = httpx.get(f"{server.inference}/ping")
    assert response.status_code == 200
    assert response.json() == {"status": "Healthy"}
    head = httpx.head(f"{server.inference}/ping")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(response.content))


def test_openapi_description_on_both_ports(server: Server) -> None:
    inference = httpx.request("OPTIONS", f"{server.inference}/").json()
    assert inference["openapi"].startswith("3.")
    assert "/predictions/{model_name}/{model_version}" in inference["paths"]
    assert "/v2/models/{model_name}/infer" in inference["paths"]
    assert httpx.get(f"{server.inference}/api-description").json() == inference
    management = httpx.request("OPTIONS", f"{server.management}/", headers=server.auth).json()
    assert "put" in management["paths"]["/models/{model_name}/{model_version}/set-default"]


def test_predictions_default_and_versioned(server: Server) -> None:
    row = [0.1, 0.2, 0.3, 0.4]
    for path in ("/predictions/mlp", "/predictions/mlp/1.0"):
        response = httpx.post(f"{server.inference}{path}", json=row)
        assert response.status_code == 200, response.text
        assert response.json() == pytest.approx(mlp_scores(row), abs=1e-5)
    put = httpx.put(f"{server.inference}/predictions/echo", json={"a": 1})
    assert put.json()["echo"] == {"a": 1}


def test_the_answer_names_the_request_id_the_handler_was_given(server: Server) -> None:
    given = httpx.post(
        f"{server.inference}/predictions/echo", json={}, headers={"X-Request-Id": "t-1"}
    )
    fresh = httpx.post(f"{server.inference}/predictions/echo", json={})
    assert given.headers["x-request-id"] == given.json()["request_id"] == "t-1"
    assert re.fullmatch(r"[0-9a-f-]{36}", fresh.headers["x-request-id"])
    assert fresh.json()["request_id"] == fresh.headers["x-request-id"]
    assert fresh.headers["cache-control"] == "no-cache, no-store, must-revalidate, private"


def test_explanations_reach_the_handler_as_explain(server: Server) -> None:
    response = httpx.post(f"{server.inference}/explanations/echo", json={"x": 1})
    assert response.status_code == 200
    assert response.json()["explain"] == "True"
    assert httpx.post(f"{server.inference}/predictions/echo", json={}).json()["explain"] == "False"


def test_kserve_v1_predict_and_readiness(server: Server) -> None:
    response = httpx.post(f"{server.inference}/v1/models/echo:predict", json={"instances": [1]})
    assert response.status_code == 200
    assert response.json()["echo"] == {"instances": [1]}
    explain = httpx.post(f"{server.inference}/v1/models/echo:explain", json={"instances": [1]})
    assert explain.json()["explain"] == "True"
    assert httpx.get(f"{server.inference}/v1/models/echo").json() == {"name": "echo", "ready": True}


def test_unknown_model_version_and_route_use_torchserve_errors(server: Server) -> None:
    missing = httpx.post(f"{server.inference}/predictions/nope", json={})
    assert missing.status_code == 404
    assert missing.json() == {
        "code": 404,
        "type": "ModelNotFoundException",
        "message": "Model not found: nope",
    }
    version = httpx.post(f"{server.inference}/predictions/echo/9.9", json={})
    assert version.status_code == 404
    assert version.json()["type"] == "ModelVersionNotFoundException"
    route = httpx.get(f"{server.inference}/no/such/route")
    assert route.status_code == 404 and set(route.json()) == ERROR_KEYS
    method = httpx.get(f"{server.inference}/predictions/echo")
    assert method.status_code == 405 and method.json()["type"] == "MethodNotAllowedException"


def test_oversized_body_is_413(server: Server) -> None:
    response = httpx.post(
        f"{server.inference}/predictions/echo",
        content=b"x" * (MAX_REQUEST + 1),
        headers={"content-type": "application/octet-stream"},
    )
    assert response.status_code == 413
    assert "max_request_size" in response.json()["message"]
    assert httpx.get(f"{server.inference}/ping").status_code == 200


def test_request_side_limits_come_from_config_properties(server: Server) -> None:
    header = httpx.get(f"{server.inference}/ping", headers={"x-big": "a" * MAX_HEAD})
    assert header.status_code == 431 and "max_request_head_size" in header.json()["message"]
    url = httpx.get(f"{server.inference}/ping?" + "a" * MAX_HEAD)
    assert url.status_code == 414
    deep = httpx.post(
        f"{server.inference}/predictions/echo",
        content=b"[" * 21 + b"]" * 21,
        headers={"content-type": "application/json"},
    )
    assert deep.status_code == 400 and "max_json_depth" in deep.json()["message"]
    overflow = httpx.post(
        f"{server.inference}/v2/models/echo/infer",
        json={"inputs": [{"name": "x", "shape": [2**32, 2**32], "datatype": "FP32", "data": []}]},
    )
    assert overflow.status_code == 400 and "int64" in overflow.json()["message"]
    assert httpx.get(f"{server.inference}/ping").status_code == 200


def test_batching_forms_batches_under_concurrency(server: Server) -> None:
    # echo: batchSize 4, maxBatchDelay 300 ms, one worker; 8 concurrent requests
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(
                lambda i: httpx.post(
                    f"{server.inference}/predictions/echo", json={"i": i}, timeout=30
                ).json(),
                range(8),
            )
        )
    assert sorted(a["echo"]["i"] for a in answers) == list(range(8))
    assert max(a["batch"] for a in answers) > 1, answers
    assert all(a["batch"] <= 4 for a in answers)


def test_form_bodies_become_fields(server: Server) -> None:
    response = httpx.post(f"{server.inference}/predictions/echo", files={"data": b"abc"})
    assert response.status_code == 200
    assert response.json()["echo"] is None  # a form row has no "body" key, only its fields


# streaming (intermediate responses)


def _read_stream(url: str, body: dict[str, object], log: Path) -> tuple[list[bytes], list[int]]:
    """The chunks of a streamed answer, and how many parts the handler had sent at each."""
    chunks: list[bytes] = []
    sent: list[int] = []
    with httpx.stream("POST", url, json=body, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["transfer-encoding"] == "chunked"
        for chunk in response.iter_raw():
            chunks.append(chunk)
            sent.append(len(log.read_text().splitlines()) if log.exists() else 0)
    return chunks, sent


@pytest.mark.parametrize("via", ["ts", "marfleet"])
def test_intermediate_responses_arrive_one_by_one_as_http_chunks(
    server: Server, tmp_path: Path, via: str
) -> None:
    log = tmp_path / "parts.log"
    body = {"parts": 5, "delay": 0.4, "log": str(log), "via": via}
    chunks, sent = _read_stream(f"{server.inference}/predictions/stream", body, log)
    parts = [json.loads(line) for line in b"".join(chunks).splitlines()]
    assert parts == [{"part": index} for index in range(5)]
    # the first part reached the client while the handler still had parts to send
    assert sent[0] < 4, sent


@pytest.fixture(scope="module")
def routed(server: Server) -> Iterator[tuple[str, str]]:
    """One `marfleet router` before the server, HTTP and gRPC: (HTTP URL, gRPC host:port)."""
    grpc_port = free_port()
    args = ["--weights", "stable=100", "--grpc-port", str(grpc_port)]
    args.append(f"--grpc-backend=stable={server.grpc}")
    with router({"stable": server.inference}, *args) as proc:
        yield proc.url, f"127.0.0.1:{grpc_port}"


def test_intermediate_responses_pass_through_the_router_one_by_one(
    routed: tuple[str, str], tmp_path: Path
) -> None:
    log = tmp_path / "parts.log"
    body = {"parts": 5, "delay": 0.4, "log": str(log)}
    chunks, sent = _read_stream(f"{routed[0]}/predictions/stream", body, log)
    parts = [json.loads(line) for line in b"".join(chunks).splitlines()]
    assert parts == [{"part": index} for index in range(5)]
    assert sent[0] < 4, sent


def test_a_client_leaving_mid_stream_stops_the_handler(server: Server, tmp_path: Path) -> None:
    log = tmp_path / "parts.log"
    body = {"parts": 60, "delay": 0.1, "log": str(log), "via": "ts"}
    with httpx.stream(
        "POST", f"{server.inference}/predictions/stream", json=body, timeout=30
    ) as response:
        next(response.iter_raw())
    time.sleep(2.0)
    stopped_at = len(log.read_text().splitlines())
    time.sleep(1.0)
    assert len(log.read_text().splitlines()) == stopped_at < 59
    answer = httpx.post(f"{server.inference}/predictions/stream", json={"parts": 1}, timeout=30)
    assert answer.status_code == 200 and answer.json() == {"part": 0}


# gRPC: TorchServe's inference service and the Open Inference Protocol (tritonclient)

TS_SERVICE = "/org.pytorch.serve.grpc.inference.InferenceAPIsService"


def _ts_call(
    channel: grpc.Channel, method: str, request: Any, reply: Any, stream: bool = False
) -> Any:
    factory = channel.unary_stream if stream else channel.unary_unary
    return factory(
        f"{TS_SERVICE}/{method}",
        request_serializer=type(request).SerializeToString,
        response_deserializer=reply.FromString,
    )(request, timeout=30)


def test_grpc_ping_predictions_and_errors(server: Server) -> None:
    row = [0.1, 0.2, 0.3, 0.4]
    with grpc.insecure_channel(server.grpc) as channel:
        health = _ts_call(channel, "Ping", empty_pb2.Empty(), ts_pb2.TorchServeHealthResponse)
        assert json.loads(health.health) == {"status": "Healthy"}
        request = ts_pb2.PredictionsRequest(
            model_name="mlp", input={"body": json.dumps(row).encode()}
        )
        answer = _ts_call(channel, "Predictions", request, ts_pb2.PredictionResponse)
        assert json.loads(answer.prediction) == pytest.approx(mlp_scores(row), abs=1e-5)
        missing = ts_pb2.PredictionsRequest(model_name="nope", input={"body": b"[]"})
        with pytest.raises(grpc.RpcError) as error:
            _ts_call(channel, "Predictions", missing, ts_pb2.PredictionResponse)
        assert error.value.code() == grpc.StatusCode.INTERNAL  # what TorchServe 0.12 answers
        assert "nope" in str(error.value.details())
        bad = ts_pb2.PredictionsRequest(model_name="mlp", input={"body": b"[1, 2]"})
        with pytest.raises(grpc.RpcError) as error:
            _ts_call(channel, "Predictions", bad, ts_pb2.PredictionResponse)
        assert error.value.code() == grpc.StatusCode.INTERNAL


def test_workers_start_cleanly_while_grpc_calls_run(server: Server) -> None:
    """Workers are forked and exec'd while other threads serve gRPC: gRPC's fork handlers must
    not run in them (with them, about one child in a hundred died of SIGSEGV, and each fork
    logged "skipping fork() handlers"). The model serves on its ready worker all along, so
    every Ping, over gRPC and HTTP, says Healthy while the new workers load."""
    stop = threading.Event()
    answers: list[str] = []
    failures: list[BaseException] = []

    def ping() -> None:
        with grpc.insecure_channel(server.grpc) as channel:
            while not stop.is_set():
                try:
                    health = _ts_call(
                        channel, "Ping", empty_pb2.Empty(), ts_pb2.TorchServeHealthResponse
                    )
                    answers.append(json.loads(health.health)["status"])
                    http = httpx.get(f"{server.inference}/ping", timeout=30)
                    answers.append(f"{http.status_code} {http.json()['status']}")
                except (grpc.RpcError, httpx.HTTPError) as error:
                    failures.append(error)
                    return

    pingers = [threading.Thread(target=ping) for _ in range(4)]
    for thread in pingers:
        thread.start()
    try:
        for workers in (3, 1):
            scaled = httpx.put(
                f"{server.management}/models/mlp?min_worker={workers}&synchronous=true",
                headers=server.auth,
                timeout=120,
            )
            assert scaled.status_code == 200, scaled.text
    finally:
        stop.set()
        for thread in pingers:
            thread.join(30)
    assert not failures, failures[0]
    assert answers, "no gRPC call ran while the workers started"
    assert set(answers) == {"Healthy", "200 Healthy"}, set(answers)
    assert "fork_posix" not in server.log() and "killed by" not in server.log()


@pytest.mark.parametrize("via", ["direct", "router"])
def test_grpc_stream_predictions_deliver_parts_one_by_one(
    server: Server, routed: tuple[str, str], tmp_path: Path, via: str
) -> None:
    """Each StreamPredictions message reaches the client (directly or through the router) while
    the handler still has parts to produce."""
    log = tmp_path / "parts.log"
    body = json.dumps({"parts": 5, "delay": 0.4, "log": str(log)}).encode()
    request = ts_pb2.PredictionsRequest(model_name="stream", input={"body": body})
    parts, sent = [], []
    target = server.grpc if via == "direct" else routed[1]
    with grpc.insecure_channel(target) as channel:
        for reply in _ts_call(
            channel, "StreamPredictions", request, ts_pb2.PredictionResponse, stream=True
        ):
            parts.append(json.loads(reply.prediction))
            sent.append(len(log.read_text().splitlines()) if log.exists() else 0)
    assert parts == [{"part": index} for index in range(5)]
    assert sent[0] < 4, sent


@pytest.mark.parametrize("via", ["direct", "router"])
def test_grpc_stream_predictions2_answers_each_request_of_the_stream(
    server: Server, routed: tuple[str, str], via: str
) -> None:
    rows = [[0.1, 0.2, 0.3, 0.4], [1.0, -2.0, 0.5, 3.0]]
    requests = [
        ts_pb2.PredictionsRequest(model_name="mlp", input={"body": json.dumps(row).encode()})
        for row in rows
    ]
    target = server.grpc if via == "direct" else routed[1]
    with grpc.insecure_channel(target) as channel:
        replies = list(
            channel.stream_stream(
                f"{TS_SERVICE}/StreamPredictions2",
                request_serializer=ts_pb2.PredictionsRequest.SerializeToString,
                response_deserializer=ts_pb2.PredictionResponse.FromString,
            )(iter(requests), timeout=30)
        )
    assert len(replies) == len(rows)
    for reply, row in zip(replies, rows, strict=True):
        assert json.loads(reply.prediction) == pytest.approx(mlp_scores(row), abs=1e-5)


def test_tritonclient_grpc_live_metadata_and_infer(server: Server) -> None:
    client = triton_grpc.InferenceServerClient(server.grpc)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mlp")
    metadata = client.get_model_metadata("mlp")
    assert metadata.name == "mlp" and metadata.platform == "pytorch"
    declared = [
        [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in tensors]
        for tensors in (metadata.inputs, metadata.outputs)
    ]
    assert declared == [MLP_TENSORS["inputs"], MLP_TENSORS["outputs"]]
    row = np.array([[0.1, 0.2, 0.3, 0.4]], dtype=np.float32)
    tensor = triton_grpc.InferInput("input-0", [1, 4], "FP32")
    tensor.set_data_from_numpy(row)
    result = client.infer("mlp", [tensor])
    response = result.get_response()
    assert response.model_name == "mlp"
    values = result.as_numpy(response.outputs[0].name)
    assert values is not None and values.dtype == np.float32
    assert values.reshape(-1).tolist() == pytest.approx(mlp_scores(row[0].tolist()), abs=1e-5)
    words = triton_grpc.InferInput("text", [2], "BYTES")
    words.set_data_from_numpy(np.array([b"hello", b"world"], dtype=object))
    echoed = client.infer("echo", [words]).get_response()
    assert echoed.model_name == "echo" and echoed.outputs
    with pytest.raises(triton_utils.InferenceServerException) as error:
        client.infer("nope", [tensor])
    assert "nope" in str(error.value)


# KServe v2


def v2_request(data: list[float], shape: list[int]) -> dict[str, object]:
    return {"id": "r1", "inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": data}]}


def test_v2_health_metadata_and_readiness(server: Server) -> None:
    base = server.inference
    assert httpx.get(f"{base}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{base}/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"{base}/v2").json()["extensions"] == ["binary_tensor_data"]
    metadata = httpx.get(f"{base}/v2/models/mlp").json()
    assert metadata["name"] == "mlp" and metadata["versions"] == ["1.0"]
    assert (metadata["inputs"], metadata["outputs"]) == (
        MLP_TENSORS["inputs"],
        MLP_TENSORS["outputs"],
    )
    assert httpx.get(f"{base}/v2/models/echo").json()["inputs"] == []  # nothing declared
    assert httpx.get(f"{base}/v2/models/mlp/versions/1.0").status_code == 200
    assert httpx.get(f"{base}/v2/models/mlp/ready").json() == {"name": "mlp", "ready": True}
    assert httpx.get(f"{base}/v2/models/mlp/versions/1.0/ready").status_code == 200
    assert httpx.get(f"{base}/v2/models/nope/ready").status_code == 404


def test_v2_infer_json(server: Server) -> None:
    row = [0.5, -0.1, 0.0, 2.0]
    for path in ("/v2/models/mlp/infer", "/v2/models/mlp/versions/1.0/infer"):
        response = httpx.post(f"{server.inference}{path}", json=v2_request(row, [1, 4]))
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model_name"] == "mlp" and body["id"] == "r1"
        (output,) = body["outputs"]
        assert output["datatype"] == "FP32" and output["shape"] == [3]
        assert output["data"] == pytest.approx(mlp_scores(row), abs=1e-5)


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        (v2_request([1.0, 2.0, 3.0], [1, 4]), "shape [1, 4] needs 4 elements, data has 3"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP99", "data": [1]}]}, "FP99"),
        ({"inputs": []}, "non-empty"),
        ({"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}, "has no name"),
    ],
)
def test_v2_malformed_request_is_400_with_message(
    server: Server, document: dict[str, object], fragment: str
) -> None:
    response = httpx.post(f"{server.inference}/v2/models/mlp/infer", json=document)
    assert response.status_code == 400
    assert fragment in response.json()["message"]


def test_v2_body_that_is_not_json_is_400(server: Server) -> None:
    response = httpx.post(f"{server.inference}/v2/models/mlp/infer", content=b"{not json")
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["message"]


def test_tritonclient_http_runs_a_v2_inference(server: Server) -> None:
    client = triton.InferenceServerClient(url=server.inference.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mlp")
    row = np.array([[0.3, 0.1, -0.7, 1.5]], dtype=np.float32)
    tensor = triton.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(row)  # binary tensor extension, tritonclient's default
    result = client.infer("mlp", [tensor], outputs=[triton.InferRequestedOutput("scores")])
    scores = result.as_numpy("scores")
    assert scores is not None
    assert scores.tolist() == pytest.approx(mlp_scores(row[0].tolist()), abs=1e-5)
    client.close()


# metrics


def test_metrics_use_the_documented_names(server: Server) -> None:
    httpx.post(f"{server.inference}/predictions/echo", json={"m": 1})
    text = httpx.get(f"{server.metrics}/metrics").text
    assert metric_value(text, "ts_inference_requests_total", model_name="echo") >= 1
    assert metric_value(text, "ts_inference_latency_microseconds", model_name="echo") > 0
    assert metric_value(text, "ts_queue_latency_microseconds", model_name="echo") >= 0
    assert metric_value(text, "Requests2XX", Level="Host") >= 1
    assert metric_value(text, "Requests4XX", Level="Host") >= 1  # the 404s above
    labels = {"model": "echo", "version": "1.0", "variant": ""}
    assert metric_value(text, "marfleet_requests_total", code="200", **labels) >= 1
    assert metric_value(text, "marfleet_request_duration_seconds_count", **labels) >= 1
    assert metric_value(text, "marfleet_queue_duration_seconds_count", **labels) >= 1
    assert metric_value(text, "marfleet_batch_size_count", **labels) >= 1
    assert metric_value(text, "marfleet_inflight_requests", **labels) == 0
    assert metric_value(text, "marfleet_queue_depth", **labels) == 0
    assert metric_value(text, "marfleet_workers", device="cpu", state="ready", **labels) == 1
    assert metric_value(text, "marfleet_model_load_seconds_count", **labels) == 1
    assert metric_value(text, "RowsProcessed", ModelName="echo", Level="Model") >= 1
    # TorchServe's default metrics, as its Prometheus mode names and labels them
    assert metric_value(text, "PredictionTime", ModelName="echo", Level="Model") > 0
    assert metric_value(text, "QueueTime", Level="Host") >= 0
    assert metric_value(text, "WorkerThreadTime", Level="Host") >= 0
    assert re.search(r'^WorkerLoadTime\{WorkerName="W-\d+-echo_1\.0",Level="Host"', text, re.M)
    assert 0 < metric_value(text, "MemoryUtilization", Level="Host") < 100
    before = metric_value(text, "Requests2XX", Level="Host")
    assert httpx.get(f"{server.management}/models", headers=server.auth).status_code == 200
    after = metric_value(httpx.get(f"{server.metrics}/metrics").text, "Requests2XX", Level="Host")
    assert after == before + 1  # the management API counts, as in TorchServe
    for name in (
        "marfleet_queue_rejections_total",
        "marfleet_worker_restarts_total",
        "marfleet_handler_errors_total",
        "marfleet_model_load_failures_total",
    ):
        assert f"# TYPE {name} counter" in text


# management API


def test_management_refuses_missing_or_wrong_token(server: Server) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
        response = httpx.get(f"{server.management}/models", headers=headers)
        assert response.status_code == 400
        assert response.json()["type"] == "InvalidKeyException"
    key_file = json.loads((server.workdir / "key_file.json").read_text())
    assert set(key_file) == {"management", "inference", "API"}
    assert httpx.get(f"{server.management}/models", headers=server.auth).status_code == 200


def test_list_is_paginated(server: Server) -> None:
    first = httpx.get(f"{server.management}/models?limit=1", headers=server.auth).json()
    assert first["models"] == [{"modelName": "echo", "modelUrl": "echo.mar"}]
    token = first["nextPageToken"]
    second = httpx.get(
        f"{server.management}/models?limit=1&next_page_token={token}", headers=server.auth
    ).json()
    assert second["models"][0]["modelName"] == "mlp"


def test_describe_matches_torchserve_fields(server: Server) -> None:
    (described,) = httpx.get(f"{server.management}/models/echo", headers=server.auth).json()
    assert described["modelName"] == "echo" and described["modelVersion"] == "1.0"
    assert described["batchSize"] == 4 and described["maxBatchDelay"] == 300
    assert described["loadedAtStartup"] is True
    (worker,) = described["workers"]
    assert worker["status"] == "READY" and worker["gpu"] is False and worker["pid"] > 0
    assert described["jobQueueStatus"] == {"remainingCapacity": 100, "pendingRequests": 0}
    missing = httpx.get(f"{server.management}/models/echo/7.0", headers=server.auth)
    assert missing.status_code == 404
    assert missing.json()["type"] == "ModelVersionNotFoundException"


def test_a_customized_describe_asks_the_handler(server: Server) -> None:
    """A plain `handle` function gets the describe request as TorchServe sends it (an empty
    row, header `describe: True`); the JSON object it answers is the metadata."""
    url = f"{server.management}/models/echo?customized=true"
    described = httpx.get(url, headers=server.auth, timeout=60)
    assert described.status_code == 200, described.text
    metadata = described.json()[0]["customizedMetadata"]
    assert (metadata["echo"], metadata["batch"]) == (None, 1)  # the echo handler's answer
    assert list(described.json()[0])[-1] == "customizedMetadata"  # last, as in TorchServe


def test_register_scale_set_default_unregister(server: Server) -> None:
    mgmt, auth = server.management, server.auth
    registered = httpx.post(
        f"{mgmt}/models?url=echo-v2.mar&initial_workers=1", headers=auth, timeout=60
    )
    assert registered.status_code == 200, registered.text
    assert registered.json() == {
        "status": 'Model "echo" Version: 2.0 registered with 1 initial workers'
    }
    again = httpx.post(f"{mgmt}/models?url=echo-v2.mar", headers=auth)
    assert again.status_code == 409 and again.json()["type"] == "ConflictStatusException"
    all_versions = httpx.get(f"{mgmt}/models/echo/all", headers=auth).json()
    assert [v["modelVersion"] for v in all_versions] == ["1.0", "2.0"]

    scaled = httpx.put(
        f"{mgmt}/models/echo/2.0?min_worker=2&synchronous=true", headers=auth, timeout=60
    )
    assert scaled.json() == {"status": "Workers scaled to 2 for model: echo, version: 2.0"}
    (described,) = httpx.get(f"{mgmt}/models/echo/2.0", headers=auth).json()
    assert [w["status"] for w in described["workers"]] == ["READY", "READY"]

    # scale down while requests flow: none may fail
    with ThreadPoolExecutor(4) as pool:
        pending = [
            pool.submit(
                httpx.post, f"{server.inference}/predictions/echo/2.0", json={"n": i}, timeout=30
            )
            for i in range(12)
        ]
        down = httpx.put(f"{mgmt}/models/echo/2.0?min_worker=1", headers=auth)
        assert down.status_code == 202
        assert down.json() == {"status": "Processing worker updates..."}
        assert [f.result().status_code for f in pending] == [200] * 12

    default = httpx.put(f"{mgmt}/models/echo/2.0/set-default", headers=auth)
    assert default.json() == {
        "status": 'Default version successfully updated for model "echo" to "2.0"'
    }
    assert httpx.post(f"{server.inference}/predictions/echo", json={}).status_code == 200
    refused = httpx.delete(f"{mgmt}/models/echo/2.0", headers=auth)
    assert refused.status_code == 403 and refused.json() == {
        "code": 403,
        "type": "InvalidModelVersionException",
        "message": "Cannot remove default version for model echo",
    }
    removed = httpx.delete(f"{mgmt}/models/echo/1.0", headers=auth, timeout=60)
    assert removed.json() == {"status": 'Model "echo" unregistered'}
    gone = httpx.post(f"{server.inference}/predictions/echo/1.0", json={})
    assert gone.status_code == 404
    assert httpx.post(f"{server.inference}/predictions/echo", json={}).status_code == 200


def test_async_register_returns_202_then_serves_and_unregister_drains(server: Server) -> None:
    response = httpx.post(
        f"{server.management}/models?url=victim.mar&initial_workers=1&synchronous=false",
        headers=server.auth,
    )
    assert response.status_code == 202
    deadline = time.monotonic() + 60
    while httpx.get(f"{server.inference}/v2/models/victim/ready").status_code != 200:
        assert time.monotonic() < deadline, "the model never became ready"
        time.sleep(0.2)
    assert httpx.post(f"{server.inference}/predictions/victim", json={}).status_code == 200
    with ThreadPoolExecutor(1) as pool:  # unregistering drains what was already accepted
        in_flight = pool.submit(
            httpx.post, f"{server.inference}/predictions/victim", json={"sleep": 1}, timeout=30
        )
        time.sleep(0.3)
        removed = httpx.delete(
            f"{server.management}/models/victim", headers=server.auth, timeout=60
        )  # stopping the worker takes a while on a loaded machine
        assert removed.status_code == 200
        assert in_flight.result().status_code == 200
    gone = httpx.post(f"{server.inference}/predictions/victim", json={})
    assert gone.status_code == 404


@pytest.mark.parametrize(
    ("url", "status", "error_type"),
    [
        ("http://127.0.0.1:9/missing.mar", 400, "DownloadArchiveException"),
        ("ftp://example.invalid/x.mar", 404, "ModelNotFoundException"),
        ("not-in-store.mar", 404, "ModelNotFoundException"),
        ("broken.mar", 400, "BadRequestException"),
        ("loadfail.mar", 500, "InternalServerException"),
        ("../outside.mar", 400, "BadRequestException"),
    ],
)
def test_bad_model_url_or_archive_is_refused_while_others_serve(
    server: Server, url: str, status: int, error_type: str
) -> None:
    response = httpx.post(
        f"{server.management}/models",
        params={"url": url, "initial_workers": "1"},  # TorchServe's API default is none
        headers=server.auth,
        timeout=120,
    )
    assert response.status_code == status, response.text
    assert response.json()["type"] == error_type
    assert httpx.post(f"{server.inference}/predictions/mlp", json=[0, 0, 0, 0]).status_code == 200
    names = [
        m["modelName"]
        for m in httpx.get(f"{server.management}/models", headers=server.auth).json()["models"]
    ]
    assert "loadfail" not in names and "broken" not in names


def test_missing_url_is_400(server: Server) -> None:
    response = httpx.post(f"{server.management}/models", headers=server.auth)
    assert response.status_code == 400
    assert response.json()["message"] == "Parameter url is required."
