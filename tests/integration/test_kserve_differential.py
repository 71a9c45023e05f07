"""Differential test of the KServe protocols against KServe's own model server (kserve 0.21,
`tests/kserve_app.py`, in its own venv: `make test` creates it) and `marfleet serve`, both
serving `double`: twice the first v2 input as FP32 output `y`, twice a v1 request's
`instances`, an exception for an input named `fail`.

Compared per call over HTTP (status, and the body where both answer 200), then through the
clients KServe's users have (tritonclient over HTTP and gRPC): the same arrays, and errors
whose reason reaches the caller (KServe's error bodies carry only `"error"`; marfleet's carry
it beside TorchServe's `message`). What differs on purpose is in `DELIBERATE`, each with its
reason (docs/moving-from-kserve.md). One server of each for the module.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
import tritonclient.utils as triton_utils

from e2e.bench.peer_venv import KSERVE_PIN, kserve_venv, python_of
from e2e.support import free_port, terminate, wait_for
from tests.handler_sources import write_handler
from tests.serving import archive, serve

pytestmark = pytest.mark.slow

APP = Path(__file__).resolve().parents[1] / "kserve_app.py"
CLIENT = Path(__file__).resolve().parents[1] / "kserve_client.py"

# marfleet's side of tests/kserve_app.py's model: a TorchServe module handler.
DOUBLE_HANDLER = """
import json


def _double(value):
    return [_double(item) for item in value] if isinstance(value, list) else 2 * value


def _flat(value):
    return [x for item in value for x in _flat(item)] if isinstance(value, list) else [value]


def _answer(document):
    if "instances" in document:
        return {"predictions": _double(document["instances"])}
    tensor = document["inputs"][0]
    if tensor["name"] == "fail":
        raise ValueError("asked to fail")
    doubled = [2.0 * x for x in _flat(tensor["data"])]
    output = {"name": "y", "datatype": "FP32", "shape": tensor["shape"], "data": doubled}
    return {"outputs": [output]}


def handle(data, context):
    if data is None:
        return None
    answers = []
    for row in data:
        value = row.get("data") if row.get("data") is not None else row.get("body")
        if isinstance(value, (bytes, bytearray)):
            value = json.loads(value)
        answers.append(_answer(value))
    return answers
"""

V2_BODY = {
    "id": "req-1",
    "inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2.5, -3, 4]}],
}
FAIL_BODY = {"inputs": [{"name": "fail", "shape": [1], "datatype": "FP32", "data": [1]}]}

# (method, path, JSON body or raw bytes): each answered alike by both servers
CALLS: list[tuple[str, str, Any]] = [
    ("GET", "/", None),
    ("GET", "/v2/health/live", None),
    ("GET", "/v2/health/ready", None),
    ("GET", "/v1/models", None),
    ("GET", "/v2/models", None),
    ("GET", "/v1/models/double", None),
    ("GET", "/v2/models/double/ready", None),
    ("POST", "/v1/models/double:predict", {"instances": [[1, 2], [3, 4.5]]}),
    ("POST", "/v2/models/double/infer", V2_BODY),
    # errors: the same status, and a reason in "error"
    ("GET", "/v1/models/nope", None),
    ("GET", "/v2/models/nope", None),
    ("GET", "/v2/models/nope/ready", None),
    ("POST", "/v1/models/nope:predict", {"instances": [[1]]}),
    ("POST", "/v2/models/nope/infer", V2_BODY),
    ("POST", "/v2/models/double/infer", b"{not json"),
    ("POST", "/v2/models/double/infer", FAIL_BODY),
]

DELIBERATE = {
    "GET /v2": "server metadata names the server that answers (marfleet, binary_tensor_data)",
    "versions": "marfleet serves model versions (/v2/models/m/versions/v/...); KServe "
    "answers 501 Model versioning not supported",
    "gRPC malformed": "a request whose data does not fit its shape is INVALID_ARGUMENT, "
    "checked before a worker sees it; KServe answers INTERNAL",
}


@dataclass
class Pair:
    python: Path  # the KServe venv's, for KServe's own client
    kserve_http: str
    kserve_grpc: str
    marfleet_http: str
    marfleet_grpc: str


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    python = python_of(kserve_venv())
    if not python.exists():
        raise FileNotFoundError(
            f"{python} is missing: `make test` creates KServe's venv ({KSERVE_PIN}); "
            "or run `make kserve-venv`"
        )
    root = tmp_path_factory.mktemp("kserve-differential")
    store = root / "store"
    store.mkdir()
    archive(store, "double", write_handler(root, "double_handler", DOUBLE_HANDLER))
    http_port, grpc_port = free_port(), free_port()
    with (root / "kserve.log").open("wb") as log:
        process = subprocess.Popen(
            [str(python), str(APP), str(http_port), str(grpc_port)],
            cwd=root,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        kserve_http = f"http://127.0.0.1:{http_port}"

        def kserve_ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"KServe exited:\n{(root / 'kserve.log').read_text()[-3000:]}")
            try:
                return httpx.get(f"{kserve_http}/v2/models/double/ready").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(kserve_ready, 90, "KServe's model server to be ready")
        with serve(store, root / "marfleet", models=["double=double.mar"]) as server:
            yield Pair(
                python,
                kserve_http,
                f"127.0.0.1:{grpc_port}",
                server.inference,
                server.grpc.removeprefix("http://"),
            )
    finally:
        terminate(process, grace=15)


def _call(base: str, method: str, path: str, body: Any) -> httpx.Response:
    if isinstance(body, bytes):
        return httpx.request(method, base + path, content=body, timeout=30)
    return httpx.request(method, base + path, json=body, timeout=30)


def _comparable(path: str, document: Any) -> Any:
    """A v2 inference answer without the fields the protocol leaves optional (KServe sends
    `model_version: null` and `parameters: null`, marfleet the version it ran)."""
    if path.endswith("/infer") and isinstance(document, dict):
        fields = ("name", "datatype", "shape", "data")
        outputs = [{key: tensor.get(key) for key in fields} for tensor in document["outputs"]]
        return {"model_name": document["model_name"], "id": document.get("id"), "outputs": outputs}
    return document


@pytest.mark.parametrize(("method", "path", "body"), CALLS, ids=lambda v: str(v)[:40])
def test_http_calls_answer_alike(pair: Pair, method: str, path: str, body: Any) -> None:
    theirs = _call(pair.kserve_http, method, path, body)
    ours = _call(pair.marfleet_http, method, path, body)
    assert ours.status_code == theirs.status_code, (theirs.text, ours.text)
    if theirs.status_code == 200:
        assert _comparable(path, ours.json()) == _comparable(path, theirs.json())
        return
    assert ours.headers["content-type"] == "application/json"
    their_error, our_error = theirs.json()["error"], ours.json()["error"]
    assert isinstance(our_error, str) and our_error, ours.text
    assert our_error == ours.json()["message"]  # the same reason for TorchServe's clients
    if "nope" in path:
        assert "nope" in their_error and "nope" in our_error


def test_model_metadata_has_the_same_fields(pair: Pair) -> None:
    theirs = httpx.get(f"{pair.kserve_http}/v2/models/double").json()
    ours = httpx.get(f"{pair.marfleet_http}/v2/models/double").json()
    fields = {"name", "versions", "platform", "inputs", "outputs"}
    assert fields <= theirs.keys() and fields <= ours.keys()
    assert ours["name"] == theirs["name"] == "double"


def _http_client(base: str) -> triton_http.InferenceServerClient:
    return triton_http.InferenceServerClient(base.removeprefix("http://"))


@pytest.mark.parametrize("binary", [False, True], ids=["json-outputs", "binary-outputs"])
def test_tritonclient_http_gets_the_same_answers(pair: Pair, binary: bool) -> None:
    """tritonclient's binary tensor extension for the input (KServe 0.21 refuses the request
    tritonclient makes when no tensor is binary: it sends no Content-Type); outputs both ways."""
    values = np.array([[1.5, -2.0, 3.0], [0.25, 8.0, -1.0]], dtype=np.float32)
    answers = []
    for base in (pair.kserve_http, pair.marfleet_http):
        client = _http_client(base)
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("double") and not client.is_model_ready("nope")
        tensor = triton_http.InferInput("x", list(values.shape), "FP32")
        tensor.set_data_from_numpy(values)
        wanted = [triton_http.InferRequestedOutput("y", binary_data=binary)]
        result = client.infer("double", [tensor], outputs=wanted, request_id="r-7")
        assert result.get_response()["id"] == "r-7"
        answers.append(result.as_numpy("y"))
    assert answers[0].tolist() == answers[1].tolist() == (values * 2).tolist()


def test_tritonclient_http_errors_carry_the_reason(pair: Pair) -> None:
    """tritonclient reads an error's reason from `"error"`; without it the user sees only
    'an exception occurred in the client while decoding the response'."""
    tensor = triton_http.InferInput("x", [1], "FP32")
    tensor.set_data_from_numpy(np.array([1.0], dtype=np.float32))
    failing = triton_http.InferInput("fail", [1], "FP32")
    failing.set_data_from_numpy(np.array([1.0], dtype=np.float32))
    for base in (pair.kserve_http, pair.marfleet_http):
        client = _http_client(base)
        calls: list[tuple[Any, tuple[Any, ...], str]] = [
            (client.get_model_metadata, ("nope",), "404"),
            (client.infer, ("nope", [tensor]), "404"),
            (client.infer, ("double", [failing]), "500"),
        ]
        for method, args, status in calls:
            with pytest.raises(triton_utils.InferenceServerException) as raised:
                method(*args)
            error = raised.value
            assert error.status() == status, (base, str(error))
            assert "decoding the response" not in error.message(), (base, str(error))
            if status == "404":
                assert "nope" in error.message(), (base, str(error))


def test_tritonclient_grpc_gets_the_same_answers_and_codes(pair: Pair) -> None:
    values = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    answers = []
    for target in (pair.kserve_grpc, pair.marfleet_grpc):
        client = triton_grpc.InferenceServerClient(target)
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("double")
        tensor = triton_grpc.InferInput("x", list(values.shape), "FP32")
        tensor.set_data_from_numpy(values)
        result = client.infer("double", [tensor], request_id="g-1")
        assert result.get_response().id == "g-1"
        answers.append(result.as_numpy("y"))
        calls: list[tuple[Any, tuple[Any, ...]]] = [
            (client.is_model_ready, ("nope",)),
            (client.get_model_metadata, ("nope",)),
            (client.infer, ("nope", [tensor])),
        ]
        for method, args in calls:
            with pytest.raises(triton_utils.InferenceServerException) as raised:
                method(*args)
            assert raised.value.status() == "StatusCode.NOT_FOUND", (target, str(raised.value))
            assert "nope" in raised.value.message()
        client.close()
    assert answers[0].tolist() == answers[1].tolist() == (values * 2).tolist()


def test_deliberate_differences_are_real(pair: Pair) -> None:
    """Each difference DELIBERATE names still exists: the day one goes, so does its entry."""
    theirs = httpx.get(f"{pair.kserve_http}/v2").json()
    ours = httpx.get(f"{pair.marfleet_http}/v2").json()
    assert (theirs["name"], ours["name"]) == ("kserve", "marfleet")
    versioned = "/v2/models/double/versions/1.0/infer"
    assert _call(pair.kserve_http, "POST", versioned, V2_BODY).status_code == 501
    assert _call(pair.marfleet_http, "POST", versioned, V2_BODY).status_code == 200
    bad = {"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1.0]}]}
    assert json.loads(_call(pair.marfleet_http, "POST", "/v2/models/double/infer", bad).text)[
        "error"
    ].startswith("Invalid KServe v2 request")
    for target, code in ((pair.kserve_grpc, "INTERNAL"), (pair.marfleet_grpc, "INVALID_ARGUMENT")):
        client = triton_grpc.InferenceServerClient(target)
        tensor = triton_grpc.InferInput("x", [3], "FP32")  # no data for its three elements
        with pytest.raises(triton_utils.InferenceServerException) as raised:
            client.infer("double", [tensor])
        assert raised.value.status() == f"StatusCode.{code}", (target, str(raised.value))
        client.close()
    assert set(DELIBERATE) == {"GET /v2", "versions", "gRPC malformed"}


def test_kserves_own_client_gets_the_same_answers(pair: Pair) -> None:
    """KServe's Python SDK (`InferenceRESTClient` with the v1 and v2 protocols, and
    `InferenceGRPCClient`), run in KServe's venv against each server: the same results, and
    errors that name what was wrong."""

    def results(base: str, grpc_target: str) -> dict[str, Any]:
        done = subprocess.run(
            [str(pair.python), str(CLIENT), base, grpc_target],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        answer: dict[str, Any] = json.loads(done.stdout)
        return answer

    theirs = results(pair.kserve_http, pair.kserve_grpc)
    ours = results(pair.marfleet_http, pair.marfleet_grpc)
    assert theirs.keys() == ours.keys()
    for call in theirs:
        if "ok" in theirs[call]:
            assert ours[call] == theirs[call], call
        else:  # the same status; the message carries the server's reason, naming the model
            assert ours[call]["status"] == theirs[call]["status"], (call, ours[call])
            assert "nope" in ours[call]["message"] and "nope" in theirs[call]["message"]
    assert theirs["v2 infer"]["ok"]["output"][3] == [[2.0, 4.0], [6.0, 9.0]]
    assert theirs["grpc infer"] == theirs["v2 infer"]
    assert theirs["grpc infer nope"]["status"] == "StatusCode.NOT_FOUND"
    assert theirs["v2 model ready nope"] == {"ok": False}
    assert theirs["v1 live"] == {"ok": True}
