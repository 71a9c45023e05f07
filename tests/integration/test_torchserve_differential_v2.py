"""Differential test of TorchServe's KServe v2 side and its Prometheus metrics: the real
TorchServe 0.12 with `service_envelope=kservev2`, `ts_open_inference_protocol=true`,
`metrics_mode=prometheus` and a `metrics_config` of its own, and `marfleet serve` with the same
config.properties, the same archives from the real torch-model-archiver.

Through the envelope a stock handler (TorchServe's MNIST example, a subclass of
`ImageClassifier`) serves v2 requests, and a probe handler shows the rows each v2 input
becomes, the explain flag of `/v2/models/{m}/explain`, and records one custom metric of every
kind and API (`context.metrics`); its model-config.yaml declares v2 tensors (TorchServe loads
it all the same). Compared per call: status and body, byte for byte where the request names its
id, and a gRPC ModelInfer (Open Inference Protocol) through the envelope. Then the metric
families: every family TorchServe exports, marfleet exports with the same type and label names,
and nothing metrics_config leaves out. Calls whose difference is
deliberate are in `DELIBERATE`, each with its reason (docs/moving-from-torchserve.md).
One TorchServe and one marfleet for the module.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from google.protobuf.json_format import MessageToDict
from marfleet.runtime.server.protos import open_inference_grpc_pb2 as oip

from tests.handler_sources import MNIST_HANDLER, PROBE_HANDLER, write_handler
from tests.models import TinyDigitClassifier, image_bytes, write_eager
from tests.serving import serve, without_kserve_error
from tests.torchserve_tools import TorchServe, torch_model_archiver

pytestmark = pytest.mark.slow

DIGIT = base64.b64encode(image_bytes(size=(28, 28), seed=6, mode="L")).decode()
PIXELS = [[[round((row * 28 + col) / 784, 3) for col in range(28)] for row in range(28)]]


def v2(*inputs: dict[str, Any], request_id: str | None = None) -> bytes:
    document: dict[str, Any] = {"inputs": list(inputs)}
    if request_id is not None:
        document["id"] = request_id
    return json.dumps(document).encode()


# v2 model metadata as the probe's model-config.yaml declares it (TorchServe ignores the keys)
PROBE_TENSORS = {
    "inputs": [{"name": "a", "datatype": "INT64", "shape": [-1]}],
    "outputs": [{"name": "a", "datatype": "BYTES", "shape": [1]}],
}


@dataclass(frozen=True)
class Step:
    label: str
    method: str
    path: str
    body: bytes | None = None


STEPS = [
    Step("mnist, a base64 PNG", "POST", "/v2/models/mnist/infer", v2(
        {"name": "input-0", "shape": [1], "datatype": "BYTES", "data": [DIGIT]},
        request_id="d1",
    )),
    Step("mnist, pixels as FP32", "POST", "/v2/models/mnist/infer", v2(
        {"name": "pixels", "shape": [1, 28, 28], "datatype": "FP32", "data": PIXELS},
    )),
    Step("probe, two inputs", "POST", "/v2/models/probe/infer", v2(
        {"name": "a", "shape": [2, 2], "datatype": "INT64", "data": [1, 2, 3, 4]},
        {"name": "b", "shape": [1], "datatype": "BYTES", "data": ["word"]},
        request_id="p1",
    )),
    Step("probe, booleans and floats", "POST", "/v2/models/probe/infer", v2(
        {"name": "flags", "shape": [3], "datatype": "BOOL", "data": [True, False, True]},
        {"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [[0.5, 1.25]]},
        request_id="p2",
    )),
    Step("probe, explain", "POST", "/v2/models/probe/explain", v2(
        {"name": "a", "shape": [2], "datatype": "INT32", "data": [7, 8]}, request_id="p3"
    )),
    Step("mnist, explain", "POST", "/v2/models/mnist/explain", v2(
        {"name": "input-0", "shape": [1], "datatype": "BYTES", "data": [DIGIT]}, request_id="d2"
    )),
    Step("probe through /predictions", "POST", "/predictions/probe", v2(
        {"name": "a", "shape": [1], "datatype": "INT64", "data": [5]}, request_id="p4"
    )),
    Step("probe, unknown model", "POST", "/v2/models/nope/infer", v2(
        {"name": "a", "shape": [1], "datatype": "INT64", "data": [5]}
    )),
    Step("probe, no inputs", "POST", "/v2/models/probe/infer", b'{"id": "x"}'),
    Step("probe, metadata", "GET", "/v2/models/probe"),
    Step("server metadata", "GET", "/v2"),
    Step("server live", "GET", "/v2/health/live"),
    Step("server ready", "GET", "/v2/health/ready"),
    Step("probe, ready", "GET", "/v2/models/probe/ready"),
    Step("probe, a version", "POST", "/v2/models/probe/versions/1.0/infer", v2(
        {"name": "a", "shape": [1], "datatype": "INT64", "data": [5]}, request_id="p5"
    )),
]  # fmt: skip

# label -> why marfleet's answer differs (the same reasons are in docs/moving-from-torchserve.md)
DELIBERATE = {
    "probe, no inputs": "marfleet refuses a malformed v2 request with 400 before a worker sees "
    "it; TorchServe's envelope fails in the worker (503)",
    "probe, a version": "marfleet serves the versioned v2 paths; TorchServe answers 501",
    "probe, metadata": "TorchServe answers 404 to v2 model metadata over HTTP; marfleet serves "
    "it, with the tensors the model-config.yaml declares",
    "server metadata": "marfleet names itself, its version and the binary tensor extension "
    "it serves (TorchServe: Torchserve, kserve and kubeflow under a misspelt key)",
    "probe, ready": "TorchServe answers 404 to v2 model readiness over HTTP; marfleet serves it",
}


@dataclass
class Answers:
    calls: dict[str, tuple[int, Any]]
    raw: dict[str, bytes]  # the bodies as sent
    metrics: str
    grpc: dict[str, Any]  # ModelInfer over the Open Inference Protocol: the response as JSON
    filtered: dict[str, str]  # /metrics?name[]=... by query


FILTERS = (
    "name[]=QueueTime_bucket",
    "name[]=HandlerTime&name[]=ProbeRows",
    "name[]=QueueTime",
    "name[]=nope",
    "name=HandlerTime",
)
"""TorchServe's `name[]` filter on the metrics port: by sample name, several at once, a
histogram's family name (no sample has it), a name nothing has, and the wrong parameter."""


GRPC_INFER = "/org.pytorch.serve.grpc.openinference.GRPCInferenceService/ModelInfer"


def ask_grpc(target: str) -> dict[str, Any]:
    request = oip.ModelInferRequest(model_name="probe", id="g1")
    tensor = request.inputs.add(name="a", datatype="INT64", shape=[2])
    tensor.contents.int64_contents.extend([3, 4])
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(
            GRPC_INFER,
            request_serializer=oip.ModelInferRequest.SerializeToString,
            response_deserializer=oip.ModelInferResponse.FromString,
        )
        try:
            return MessageToDict(call(request, timeout=60))
        except grpc.RpcError as error:
            return {"code": str(error.code()), "details": error.details()}


def ask(inference: str, metrics: str, grpc_target: str, marfleet: bool = False) -> Answers:
    """Every step's answer; marfleet's (`marfleet`) without the `"error"` it adds on KServe's
    paths (checked to repeat `message`: tests.serving.without_kserve_error)."""
    calls: dict[str, tuple[int, Any]] = {}
    raw: dict[str, bytes] = {}
    for step in STEPS:
        response = httpx.request(
            step.method,
            inference + step.path,
            content=step.body,
            headers={"Content-Type": "application/json"},
            timeout=60,
        )
        content = response.content
        try:
            body: Any = response.json()
            if marfleet:
                body, content = without_kserve_error(step.path, body, content)
        except ValueError:
            body = response.content
        calls[step.label] = (response.status_code, body)
        raw[step.label] = content
    scraped = httpx.get(f"{metrics}/metrics", timeout=30).text
    filtered = {
        query: httpx.get(f"{metrics}/metrics?{query}", timeout=30).text for query in FILTERS
    }
    return Answers(calls, raw, scraped, ask_grpc(grpc_target), filtered)


def build_store(root: Path) -> Path:
    store = root / "store"
    store.mkdir()
    mnist = write_handler(root, "mnist_handler", MNIST_HANDLER)
    digits, digit_weights = write_eager(root, TinyDigitClassifier, stem="digits")
    torch_model_archiver(
        *("--model-name", "mnist", "-v", "1.0", "--handler", mnist),
        *("--model-file", digits, "--serialized-file", digit_weights, "--export-path", store),
    )
    probe = write_handler(root, "probe_handler", PROBE_HANDLER)
    config = root / "probe-config.yaml"
    config.write_text(yaml.safe_dump({"batchSize": 1, **PROBE_TENSORS}))
    torch_model_archiver(
        "--model-name", "probe", "-v", "1.0", "--handler", f"{probe.with_suffix('')}:handle",
        "--config-file", config, "--export-path", store,
    )  # fmt: skip
    return store


PROPERTIES = {
    "service_envelope": "kservev2",
    "metrics_mode": "prometheus",
    "ts_open_inference_protocol": "true",
}

# A metrics_config of one's own: some of TorchServe's default metrics (QueueTime as a histogram),
# some of the probe's metrics; what it leaves out is not exported.
METRICS_YAML = """
dimensions:
  - &model_name "ModelName"
  - &level "Level"
  - &hostname "Hostname"
ts_metrics:
  counter:
    - name: Requests2XX
      unit: Count
      dimensions: [*level, *hostname]
    - name: Requests4XX
      unit: Count
      dimensions: [*level, *hostname]
    - name: ts_inference_requests_total
      unit: Count
      dimensions: ["model_name", "model_version", "hostname"]
  histogram:
    - name: QueueTime
      unit: Milliseconds
      dimensions: [*level, *hostname]
model_metrics:
  gauge:
    - name: HandlerTime
      unit: ms
      dimensions: [*model_name, *level]
    - name: ProbeTime
      unit: ms
      dimensions: ["Kind", *model_name, *level]
    - name: ProbeGauge
      unit: count
      dimensions: ["Kind"]
  counter:
    - name: ProbeRows
      unit: count
      dimensions: ["Kind", *model_name, *level]
  histogram:
    - name: ProbeHistogram
      unit: ms
      dimensions: ["Kind"]
"""


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Answers, Answers]]:
    root = tmp_path_factory.mktemp("differential-v2")
    store = build_store(root)
    models = {"mnist": "mnist.mar", "probe": "probe.mar"}
    metrics_yaml = root / "metrics.yaml"
    metrics_yaml.write_text(METRICS_YAML)
    properties = {**PROPERTIES, "metrics_config": str(metrics_yaml)}
    torchserve = TorchServe(root / "torchserve", store, models, properties=properties)
    try:
        torchserve.start()
        theirs = ask(torchserve.inference, torchserve.metrics, torchserve.grpc)
    finally:
        torchserve.stop()
    with serve(
        store, root / "marfleet", models=list(models.values()), properties=properties
    ) as server:
        ours = ask(server.inference, server.metrics, server.grpc, marfleet=True)
    yield theirs, ours


NAMED_IDS = {"d1", "d2", "p1", "p2", "p3", "p4", "p5", "x"}  # the ids the requests carry


def comparable(answer: tuple[int, Any]) -> tuple[int, Any]:
    """The answer without the id TorchServe or marfleet made up for a request that had none."""
    status, body = answer
    if isinstance(body, dict) and body.get("id") not in NAMED_IDS:
        body = {key: value for key, value in body.items() if key != "id"}
    return status, body


def test_v2_answers_as_torchserve(answers: tuple[Answers, Answers]) -> None:
    theirs, ours = answers
    differing = [
        f"{step.label}: TorchServe {theirs.calls[step.label]!r}, "
        f"marfleet {ours.calls[step.label]!r}"
        for step in STEPS
        if step.label not in DELIBERATE
        and comparable(theirs.calls[step.label]) != comparable(ours.calls[step.label])
    ]
    assert not differing, "\n".join(differing)


def test_grpc_model_infer_as_torchserve(answers: tuple[Answers, Answers]) -> None:
    theirs, ours = answers
    assert ours.grpc == theirs.grpc
    (element,) = theirs.grpc["outputs"][0]["contents"]["bytesContents"]
    assert json.loads(base64.b64decode(element)) == {  # the row as TorchServe's gRPC makes it
        "row": {"shape": [2], "data": [3, 4], "datatype": "INT64", "name": "a"},
        "explain": None,
    }


def test_v2_bodies_are_byte_identical(answers: tuple[Answers, Answers]) -> None:
    """Where the request names its id, nothing in the answer is the server's own."""
    theirs, ours = answers
    named = [step.label for step in STEPS if step.body and b'"id": "' in step.body]
    compared = [label for label in named if label not in DELIBERATE]
    assert len(compared) == 6
    for label in compared:
        assert ours.raw[label] == theirs.raw[label], label


def test_the_v2_comparison_is_not_vacuous(answers: tuple[Answers, Answers]) -> None:
    theirs, ours = answers
    status, digit = theirs.calls["mnist, a base64 PNG"]
    assert status == 200 and digit["outputs"][0]["datatype"] == "INT64"
    rows = [output["data"][0]["row"] for output in theirs.calls["probe, two inputs"][1]["outputs"]]
    assert rows[0]["data"] == [[1, 2], [3, 4]] and rows[1]["data"] == "word"
    explained = theirs.calls["probe, explain"][1]["outputs"][0]["data"][0]
    assert explained["explain"] == "True"
    assert len(theirs.calls["mnist, explain"][1]["outputs"][0]["data"]) == 28 * 28
    assert theirs.calls["probe, no inputs"][0] == 503
    assert ours.calls["probe, no inputs"][0] == 400
    assert theirs.calls["probe, a version"][0] == 501
    assert ours.calls["probe, a version"][1]["id"] == "p5"
    assert theirs.calls["server live"] == (200, {"live": True})


def families(text: str) -> dict[str, tuple[str, frozenset[str]]]:
    """metric name -> (type, label names) of every family with samples, from Prometheus text."""
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    found: dict[str, tuple[str, frozenset[str]]] = {}
    for name, labels in re.findall(r"^([A-Za-z_:][\w:]*)(?:\{([^}]*)\})? ", text, re.MULTILINE):
        base = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        label_names = frozenset(re.findall(r'(\w+)="', labels)) - {"le"}
        found[base] = (types.get(base, "untyped"), label_names)
    return found


def test_metric_families_as_torchserve(answers: tuple[Answers, Answers]) -> None:
    """Every series TorchServe exports, marfleet exports with its type and labels; and beside
    its own marfleet_* series, marfleet exports nothing metrics_config does not declare."""
    theirs, ours = answers
    reference, mine = families(theirs.metrics), families(ours.metrics)
    differing = {name: (value, mine.get(name)) for name, value in reference.items()}
    assert {name: pair for name, pair in differing.items() if pair[0] != pair[1]} == {}
    declared = set(re.findall(r"^# TYPE (\S+) ", theirs.metrics, re.MULTILINE))
    extra = {name for name in mine if not name.startswith("marfleet_")} - declared
    assert extra == set()


def shape(text: str) -> tuple[list[str], list[str]]:
    """The TYPE lines and the sample names of Prometheus text (values change by the call)."""
    lines = text.splitlines()
    types = sorted(line for line in lines if line.startswith("# TYPE"))
    samples = sorted(
        {re.split(r"[{ ]", line, maxsplit=1)[0] for line in lines if line and line[0] != "#"}
    )
    return types, samples


def test_the_name_filter_keeps_what_torchserves_keeps(answers: tuple[Answers, Answers]) -> None:
    theirs, ours = answers
    for query in FILTERS[:-1]:
        assert shape(ours.filtered[query]) == shape(theirs.filtered[query]), query
    assert shape(ours.filtered["name=HandlerTime"]) == shape(ours.metrics)  # not a filter
    assert shape(theirs.filtered["name[]=QueueTime_bucket"])[1] == ["QueueTime_bucket"]
    assert shape(theirs.filtered["name[]=HandlerTime&name[]=ProbeRows"])[1] == [
        "HandlerTime",
        "ProbeRows",
    ]
    assert theirs.filtered["name[]=nope"].strip() == ""
    assert shape(theirs.filtered["name=HandlerTime"]) == shape(theirs.metrics)


def test_the_metrics_comparison_is_not_vacuous(answers: tuple[Answers, Answers]) -> None:
    reference = families(answers[0].metrics)
    assert reference["ProbeRows"] == ("counter", {"Kind", "ModelName", "Level", "Hostname"})
    assert reference["ProbeHistogram"] == ("histogram", {"Kind", "Hostname"})
    assert reference["QueueTime"] == ("histogram", {"Level", "Hostname"})
    assert reference["HandlerTime"][0] == "gauge"
    for left_out in ("ProbeSize", "ProbeMetric", "PredictionTime", "WorkerThreadTime"):
        assert left_out not in answers[0].metrics
