# ruff: noqa: E501  (the call table reads best one call per line)
"""Differential test of the APIs around inference: the real TorchServe 0.12 and `marfleet serve`
side by side, token authorization on, the model API enabled, the same store of archives made by
the real torch-model-archiver.

One script of calls (`STEPS`) runs in order against each server, each call with that server's
own keys (read from its key_file.json each time: keys rotate). Compared per call: the status and
the body (as JSON where it is JSON; times, pids, memory and keys normalised away). Calls whose
difference is deliberate are listed in `DELIBERATE`, each with the reason docs/moving-from-
torchserve.md gives; nothing else may differ. One TorchServe and one marfleet for the module.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest

from tests.handler_sources import MLP_HANDLER, write_handler
from tests.models import write_torchscript
from tests.serving import Server, serve, without_kserve_error
from tests.torchserve_tools import TorchServe, torch_model_archiver

pytestmark = pytest.mark.slow

JSON = {"Content-Type": "application/json"}
ROW = b"[1, 2, 3, 4]"
V2_ROW = b'{"inputs": [{"name": "x", "shape": [4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}'


@dataclass(frozen=True)
class Step:
    """One call: port ("inference" or "management"), method, path, which key it carries."""

    label: str
    port: str
    method: str
    path: str
    key: str | None  # management, inference, API, or None: no Authorization header
    header: str = "Bearer {key}"  # how the key is written into the header
    body: bytes | None = None
    wait_s: float = 0.0  # let asynchronous worker changes settle first


class Side(Protocol):
    def bearer(self, kind: str) -> dict[str, str]: ...


@dataclass
class Target:
    inference: str
    management: str
    side: Side
    answers: dict[str, tuple[int, Any]] = field(default_factory=dict)
    headers: dict[str, dict[str, str]] = field(default_factory=dict)  # surface headers per step
    raw: dict[str, bytes] = field(default_factory=dict)  # JSON bodies with nothing volatile


def description_steps() -> list[Step]:
    """`OPTIONS` on a model's paths: that model's API description (or why not)."""
    calls = [
        ("inference", "/predictions/mlp"),
        ("inference", "/predictions/mlp/1.0"),
        ("inference", "/predictions/mlp/9.9"),
        ("inference", "/predictions/nope"),
        ("inference", "/explanations/mlp"),
        ("inference", "/v1/models/mlp:predict"),
        ("inference", "/v2/models/mlp/infer"),
        ("inference", "/v2/models/nope/infer"),
        ("management", "/models/mlp"),
        ("management", "/models/mlp/1.0"),
        ("management", "/models/nope"),
        ("management", "/models"),
    ]
    steps = [Step(f"OPTIONS {path}", port, "OPTIONS", path, port) for port, path in calls]
    steps.append(Step("OPTIONS a model, no key", "inference", "OPTIONS", "/predictions/mlp", None))
    return steps


def token_steps() -> list[Step]:
    steps = []
    inference = [
        ("GET", "/ping", None),
        ("POST", "/predictions/mlp", ROW),
        ("POST", "/predictions/mlp/1.0", ROW),
        ("POST", "/explanations/mlp", ROW),
        ("POST", "/v1/models/mlp:predict", ROW),
        ("POST", "/v1/models/mlp:explain", ROW),
        ("GET", "/v2/health/live", None),
        ("GET", "/v2/models/mlp", None),
        ("POST", "/v2/models/mlp/infer", V2_ROW),
        ("POST", "/v2/models/mlp/explain", V2_ROW),
        ("GET", "/nowhere", None),
    ]
    wrong = [
        ("none", None, "Bearer {key}"),
        ("wrong", "inference", "Bearer x{key}"),
        ("lower-case bearer", "inference", "bearer {key}"),
        ("no space", "inference", "Bearer{key}"),
        ("bare key", "inference", "{key}"),
        ("management key", "management", "Bearer {key}"),
        ("API key", "API", "Bearer {key}"),
    ]
    for method, path, body in inference:
        for name, key, header in wrong:
            steps.append(
                Step(f"{method} {path} {name}", "inference", method, path, key, header, body)
            )
    steps.append(Step("ping with the key", "inference", "GET", "/ping", "inference"))
    for path in ("/v1/models", "/v2/models"):
        steps.append(Step(f"list {path} with the key", "inference", "GET", path, "inference"))
    steps.append(
        Step("predict with the key", "inference", "POST", "/predictions/mlp", "inference", body=ROW)
    )
    for port in ("inference", "management"):
        steps.append(Step(f"{port} description, no key", port, "GET", "/api-description", None))
        steps.append(Step(f"{port} OPTIONS /, no key", port, "OPTIONS", "/", None))
    for name, key, header in [*wrong[:5], ("inference key", "inference", "Bearer {key}")]:
        key = "management" if key == "inference" and name != "inference key" else key
        steps.append(Step(f"GET /models {name}", "management", "GET", "/models", key, header))
    for query in ("type=management", "type=inference", "type=API", "type=bad", ""):
        for key in (None, "management", "inference"):
            steps.append(Step(f"token {query} {key}", "management", "GET", f"/token?{query}", key))
    steps.append(Step("token type=bad API", "management", "GET", "/token?type=bad", "API"))
    steps.append(
        Step("token on the inference port", "inference", "GET", "/token?type=inference", "API")
    )
    # rotation: the step before reads the old key, so an old key is compared through "stale"
    steps.append(Step("rotate inference", "management", "GET", "/token?type=inference", "API"))
    steps.append(Step("ping with the new key", "inference", "GET", "/ping", "inference"))
    steps.append(Step("ping with the old key", "inference", "GET", "/ping", "stale:inference"))
    steps.append(Step("rotate management", "management", "GET", "/token?type=management", "API"))
    steps.append(Step("list with the new key", "management", "GET", "/models", "management"))
    steps.append(Step("list with the old key", "management", "GET", "/models", "stale:management"))
    return steps


def management_steps() -> list[Step]:
    """Every management endpoint and parameter, valid and invalid, in an order that builds on
    itself (scale, register versions, default version, pagination over the models made)."""
    calls = [
        ("describe", "GET", "/models/mlp", 0.0),
        ("describe customized", "GET", "/models/mlp?customized=true", 0.0),
        ("describe customized=TRUE", "GET", "/models/mlp/1.0?customized=TRUE", 0.0),
        ("describe customized=1", "GET", "/models/mlp?customized=1", 0.0),
        ("scale to 2, synchronous", "PUT", "/models/mlp?min_worker=2&synchronous=true", 0.0),
        ("describe after 2", "GET", "/models/mlp", 0.0),
        ("scale to 1..1", "PUT", "/models/mlp?min_worker=1&max_worker=1&synchronous=true", 0.0),
        ("describe after 1..1", "GET", "/models/mlp", 0.0),
        ("scale max only", "PUT", "/models/mlp?max_worker=3", 0.0),
        ("describe after max 3", "GET", "/models/mlp", 0.0),
        ("scale min only, asynchronous", "PUT", "/models/mlp?min_worker=2", 0.0),
        ("ping while a worker starts", "GET", "/ping", 0.0),  # the other one serves: Healthy
        ("describe after min 2", "GET", "/models/mlp", 1.0),
        ("scale min over max", "PUT", "/models/mlp?min_worker=3&max_worker=1", 0.0),
        ("scale a version", "PUT", "/models/mlp/1.0?min_worker=1&max_worker=1&synchronous=true", 0.0),
        ("scale an unknown version", "PUT", "/models/mlp/9.9?min_worker=1", 0.0),
        ("scale an unknown model", "PUT", "/models/nope?min_worker=1", 0.0),
        ("register version 2.0", "POST", "/models?url=mlp-2.0.mar&initial_workers=0", 0.0),
        ("describe customized, no worker", "GET", "/models/mlp/2.0?customized=true", 0.0),
        ("register 2.0 again", "POST", "/models?url=mlp-2.0.mar", 0.0),
        ("register 1.0 again", "POST", "/models?url=mlp.mar", 0.0),
        ("describe all", "GET", "/models/mlp/all", 0.0),
        ("describe all customized", "GET", "/models/mlp/all?customized=true", 0.0),
        ("delete the default version", "DELETE", "/models/mlp/1.0", 0.0),
        ("delete the default, no version", "DELETE", "/models/mlp", 0.0),
        ("set default 2.0", "PUT", "/models/mlp/2.0/set-default", 0.0),
        ("set default unknown", "PUT", "/models/mlp/9.9/set-default", 0.0),
        ("set default unknown model", "PUT", "/models/nope/1.0/set-default", 0.0),
        ("delete 1.0", "DELETE", "/models/mlp/1.0", 0.0),
        ("register asynchronous", "POST", "/models?url=mlp.mar&model_name=m2&initial_workers=1&synchronous=false", 0.0),
        ("register synchronous", "POST", "/models?url=mlp.mar&model_name=m3&initial_workers=1&synchronous=true", 0.0),
        ("register, default workers", "POST", "/models?url=mlp.mar&model_name=m4&synchronous=false", 0.0),
        ("describe default workers", "GET", "/models/m4", 0.0),
        ("register with every setting", "POST", "/models?url=mlp.mar&model_name=m8&initial_workers=0&startup_timeout=70&response_timeout=9&batch_size=3&max_batch_delay=11", 0.0),
        ("describe every setting", "GET", "/models/m8", 0.0),
        ("register with a handler", "POST", "/models?url=mlp.mar&model_name=m9&handler=base_handler", 0.0),
        ("predict through that handler", "POST", "/predictions/m9", 0.0),
        ("register runtime python", "POST", "/models?url=mlp.mar&model_name=m6&runtime=python&initial_workers=0", 0.0),
        ("register an unknown runtime", "POST", "/models?url=mlp.mar&model_name=m7&runtime=cobol", 0.0),
        ("register without url", "POST", "/models", 0.0),
        ("register a missing file", "POST", "/models?url=missing.mar", 0.0),
        ("register negative workers", "POST", "/models?url=mlp.mar&model_name=m11&initial_workers=-1", 0.0),
        ("list 2", "GET", "/models?limit=2", 0.0),
        ("list 2 from 2", "GET", "/models?limit=2&next_page_token=2", 0.0),
        ("list 0", "GET", "/models?limit=0", 0.0),
        ("list over 100", "GET", "/models?limit=101", 0.0),
        ("list past the end", "GET", "/models?next_page_token=100", 0.0),
        ("list from -1", "GET", "/models?next_page_token=-1", 0.0),
        ("delete an unknown model", "DELETE", "/models/nope", 0.0),
        ("delete an unknown version", "DELETE", "/models/m3/9.9", 0.0),
        ("POST to a model", "POST", "/models/mlp", 0.0),
        ("scale m3 asynchronous", "PUT", "/models/m3?min_worker=2", 0.0),
        ("scale m3 synchronous", "PUT", "/models/m3?min_worker=1&synchronous=true", 1.0),
        ("scale m3 1.0 synchronous", "PUT", "/models/m3/1.0?min_worker=1&synchronous=true", 0.0),
        ("delete m2", "DELETE", "/models/m2", 0.0),
        ("scale below zero", "PUT", "/models/m3?min_worker=-1", 0.0),
        ("scale by a word", "PUT", "/models/m3?min_worker=abc", 0.0),
        ("register with a missing handler", "POST", "/models?url=mlp.mar&model_name=m5&handler=no_such_handler&initial_workers=1", 0.0),
    ]  # fmt: skip
    steps = []
    for label, method, path, wait_s in calls:
        port = "inference" if path.startswith(("/predictions", "/ping")) else "management"
        key = "inference" if port == "inference" else "management"
        body = ROW if path.startswith("/predictions") else None
        steps.append(Step(label, port, method, path, key, body=body, wait_s=wait_s))
    return steps


STEPS = description_steps() + token_steps() + management_steps()

CORS = {
    "cors_allowed_origin": "https://app.example",
    "cors_allowed_methods": "GET, POST, PUT, OPTIONS",
    "cors_allowed_headers": "X-Custom-Header, Content-Type",
}
SURFACE_HEADERS = (
    "access-control-allow-origin",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "pragma",
    "cache-control",
    "expires",
    "x-request-id",
)
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def surface(headers: httpx.Headers) -> dict[str, str]:
    """The headers TorchServe puts on every answer, as compared: a request id is a fresh UUID
    on both, and TorchServe's Cache-Control value has a `;` where the syntax wants a `,`
    (docs/moving-from-torchserve.md)."""
    found = {name: headers[name] for name in SURFACE_HEADERS if name in headers}
    if "cache-control" in found:
        found["cache-control"] = found["cache-control"].replace("no-cache;", "no-cache,")
    if UUID.fullmatch(found.get("x-request-id", "")):
        found["x-request-id"] = "<uuid4>"
    return found


# label -> why marfleet's answer differs; the same reasons are in docs/moving-from-torchserve.md,
# and test_deliberate_differences checks marfleet's side of each.
DELIBERATE = {
    "scale below zero": "TorchServe fails with a 500 IndexOutOfBoundsException; marfleet: 400",
    "scale by a word": "TorchServe ignores a malformed number; marfleet: 400 naming it",
    "register with a missing handler": "marfleet's 500 says why the workers failed to start",
    "predict through that handler": "a handler crash is 500 in marfleet, 503 in TorchServe",
    "list /v1/models with the key": "marfleet lists the models as KServe's server does",
    "list /v2/models with the key": "marfleet lists the models as KServe's server does",
}


def normalise(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: normalise(item) for key, item in value.items() if key not in VOLATILE}
    if isinstance(value, list):
        return [normalise(item) for item in value]
    if isinstance(value, float):
        return round(value, 4)
    return value


VOLATILE = {"startTime", "pid", "memoryUsage", "id"}
# describes right after an asynchronous change: workers may still be starting or stopping
SETTLING = {"describe after max 3", "describe after min 2", "describe default workers"}


def run(target: Target, steps: list[Step]) -> None:
    stale: dict[str, str] = {}
    for step in steps:
        time.sleep(step.wait_s)
        headers = dict(JSON) if step.body is not None else {}
        if step.key is not None:
            if step.key.startswith("stale:"):
                key = stale[step.key.removeprefix("stale:")]
            else:
                key = target.side.bearer(step.key)["Authorization"].removeprefix("Bearer ")
            headers["Authorization"] = step.header.format(key=key)
        if step.label.startswith("rotate "):
            kind = step.label.removeprefix("rotate ")
            stale[kind] = target.side.bearer(kind)["Authorization"].removeprefix("Bearer ")
        base = target.inference if step.port == "inference" else target.management
        response = httpx.request(
            step.method, base + step.path, headers=headers, content=step.body, timeout=60
        )
        parsed: Any = None
        content = response.content
        try:
            parsed = response.json()
            if isinstance(target.side, Server):
                parsed, content = without_kserve_error(step.path, parsed, content)
            body: Any = normalise(parsed)
        except ValueError:
            body = response.content
        if step.path in ("/api-description", "/"):
            body = None  # each server describes itself
        elif step.method == "OPTIONS" and response.status_code == 200:
            body = {"title": body["info"]["title"]}  # the paths: each server's own routes
        if step.label in SETTLING:
            body = [{k: v for k, v in entry.items() if k != "workers"} for entry in body]
        target.answers[step.label] = (response.status_code, body)
        target.headers[step.label] = surface(response.headers)
        if parsed is not None and body == parsed:  # compared whole: the bytes can be too
            target.raw[step.label] = content


def build_store(root: Path) -> Path:
    store = root / "store"
    store.mkdir()
    write_torchscript(root)
    handler = write_handler(root, "mlp_handler", MLP_HANDLER)
    for version in ("2.0", "1.0"):
        torch_model_archiver(
            "--model-name", "mlp", "-v", version, "--export-path", store, "--handler", handler,
            "--serialized-file", root / "model.pt", "--force",
        )  # fmt: skip
        if version == "2.0":
            (store / "mlp.mar").rename(store / "mlp-2.0.mar")
    return store


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Target, Target]]:
    root = tmp_path_factory.mktemp("differential-api")
    store = build_store(root)
    torchserve = TorchServe(
        root / "torchserve", store, {"mlp": "mlp.mar"}, token_auth=True,
        properties={"enable_model_api": "true", **CORS},
    )  # fmt: skip
    try:
        torchserve.start()
        theirs = Target(torchserve.inference, torchserve.management, torchserve)
        started = time.monotonic()
        run(theirs, STEPS)
        print(f"TorchServe steps: {time.monotonic() - started:.1f} s")
    finally:
        torchserve.stop()
    properties = {
        "enable_model_api": "true",
        "disable_inference_token_authorization": "false",
        "default_workers_per_model": "1",
        "worker_threads": "1",
        **CORS,
    }
    with serve(store, root / "marfleet", models=["mlp=mlp.mar"], properties=properties) as server:
        ours = Target(server.inference, server.management, server)
        started = time.monotonic()
        run(ours, STEPS)
        print(f"marfleet steps: {time.monotonic() - started:.1f} s")
    yield theirs, ours


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {
            k: v for key, item in value.items() for k, v in flatten(item, f"{prefix}.{key}").items()
        }
    if isinstance(value, list):
        return {
            k: v for i, item in enumerate(value) for k, v in flatten(item, f"{prefix}[{i}]").items()
        }
    return {prefix: value}


def difference(reference: tuple[int, Any], mine: tuple[int, Any]) -> str:
    """What differs, path by path: TorchServe's value, then marfleet's."""
    theirs, ours = flatten(list(reference)), flatten(list(mine))
    paths = sorted(set(theirs) | set(ours))
    return "; ".join(
        f"{path} {theirs.get(path, '<none>')!r} != {ours.get(path, '<none>')!r}"
        for path in paths
        if theirs.get(path, "<none>") != ours.get(path, "<none>")
    )


def test_every_call_answers_as_torchserve_answers(answers: tuple[Target, Target]) -> None:
    theirs, ours = answers
    differing = []
    for step in STEPS:
        reference, mine = theirs.answers[step.label], ours.answers[step.label]
        if mine != reference and step.label not in DELIBERATE:
            differing.append(f"{step.label}: {difference(reference, mine)}")
    assert not differing, "\n".join(differing)


def test_every_answer_carries_the_headers_torchserve_gives(answers: tuple[Target, Target]) -> None:
    theirs, ours = answers
    differing = [
        f"{step.label}: {theirs.headers[step.label]} != {ours.headers[step.label]}"
        for step in STEPS
        if theirs.headers[step.label] != ours.headers[step.label]
    ]
    assert not differing, "\n".join(differing)
    assert theirs.headers["describe"] == {
        "access-control-allow-origin": "https://app.example",
        "access-control-allow-methods": "GET, POST, PUT, OPTIONS",
        "access-control-allow-headers": "X-Custom-Header, Content-Type",
        "pragma": "no-cache",
        "cache-control": "no-cache, no-store, must-revalidate, private",
        "expires": "Thu, 01 Jan 1970 00:00:00 UTC",
        "x-request-id": "<uuid4>",
    }


def test_equal_answers_are_equal_byte_for_byte(answers: tuple[Target, Target]) -> None:
    """Where the two answers parse alike, the bytes are alike too: the pretty-printing and
    the newline TorchServe ends its own JSON answers with."""
    theirs, ours = answers
    alike = [
        step.label
        for step in STEPS
        if theirs.answers[step.label] == ours.answers[step.label]
        and step.label in theirs.raw
        and step.label in ours.raw
    ]
    assert len(alike) > 50
    differing = [label for label in alike if theirs.raw[label] != ours.raw[label]]
    assert not differing, "\n".join(
        f"{label}: {theirs.raw[label]!r} != {ours.raw[label]!r}" for label in differing
    )
    assert theirs.raw["ping with the key"].endswith(b"}\n")


def test_a_models_description_is_answered_where_torchserve_answers_it(
    answers: tuple[Target, Target],
) -> None:
    theirs, ours = answers
    assert theirs.answers["OPTIONS /predictions/mlp"] == (200, {"title": "RESTful API for: mlp"})
    assert theirs.answers["OPTIONS /models/mlp/1.0"] == (
        200,
        {"title": "RESTful Management API for: mlp"},
    )
    assert theirs.answers["OPTIONS /predictions/nope"][0] == 404
    assert theirs.answers["OPTIONS a model, no key"][0] == 400
    status, body = ours.answers["OPTIONS /predictions/mlp"]  # compared above; and it is ours
    assert status == 200 and body == {"title": "RESTful API for: mlp"}


def test_the_comparison_is_not_vacuous(answers: tuple[Target, Target]) -> None:
    theirs, _ = answers
    statuses = {label: status for label, (status, _) in theirs.answers.items()}
    assert statuses["GET /ping none"] == 400
    assert statuses["ping with the key"] == 200
    assert statuses["ping with the old key"] == 400
    assert statuses["ping with the new key"] == 200
    assert statuses["list with the old key"] == 400
    assert statuses["inference description, no key"] == 200
    assert statuses["token type=inference None"] == 400
    assert re.search(r"scores", json.dumps(theirs.answers["predict with the key"][1]))


def test_deliberate_differences(answers: tuple[Target, Target]) -> None:
    theirs, ours = answers
    assert theirs.answers["scale below zero"][0] == 500
    assert ours.answers["scale below zero"] == (
        400,
        {
            "code": 400,
            "type": "BadRequestException",
            "message": "Parameter min_worker must be 0 or more, got -1",
        },
    )
    assert theirs.answers["scale by a word"][0] == 202
    assert ours.answers["scale by a word"][0] == 400
    status, body = ours.answers["register with a missing handler"]
    assert (status, theirs.answers["register with a missing handler"][0]) == (500, 500)
    assert body["message"].startswith('Failed to start workers for model "m5" version 1.0: ')
    # the registered handler (base_handler) answers, not the archive's: both crash on this row
    assert theirs.answers["predict through that handler"][0] == 503
    assert ours.answers["predict through that handler"] == (
        500,
        {"code": 500, "type": "InternalServerException", "message": "Prediction failed"},
    )
    for path in ("/v1/models", "/v2/models"):
        assert theirs.answers[f"list {path} with the key"][0] == 404
        assert ours.answers[f"list {path} with the key"] == (200, {"models": ["mlp"]})


def test_the_management_comparison_is_not_vacuous(answers: tuple[Target, Target]) -> None:
    theirs, _ = answers
    described = {label: body for label, (_, body) in theirs.answers.items()}
    assert len(described["describe"][0]) == 26
    workers = (
        described["describe after 1..1"][0]["minWorkers"],
        described["describe after 1..1"][0]["maxWorkers"],
    )
    assert workers == (1, 1)
    assert described["describe after max 3"][0]["maxWorkers"] == 3
    assert described["describe after min 2"][0]["maxWorkers"] == 2
    assert described["describe every setting"][0]["startupTimeout"] == 70
    assert described["describe all"][1]["loadedAtStartup"] is True  # per model name
    assert described["describe default workers"][0]["minWorkers"] == 1  # default_workers_per_model
    assert theirs.answers["delete the default version"][0] == 403
    assert theirs.answers["register asynchronous"][0] == 202
    assert described["list 2 from 2"]["nextPageToken"] == "4"
    customized = {"inputs": 4, "classes": 3}  # the handler's describe_handle
    assert described["describe customized"][0]["customizedMetadata"] == customized
    assert described["describe customized=TRUE"][0]["customizedMetadata"] == customized
    assert "customizedMetadata" not in described["describe customized=1"][0]
    assert all("customizedMetadata" not in entry for entry in described["describe all customized"])
    assert theirs.answers["describe customized, no worker"][0] == 503
