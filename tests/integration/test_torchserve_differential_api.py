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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest

from tests.handler_sources import MLP_HANDLER, write_handler
from tests.models import write_torchscript
from tests.serving import serve
from tests.torchserve_tools import TorchServe, torch_model_archiver

pytestmark = pytest.mark.slow

JSON = {"Content-Type": "application/json"}
ROW = b"[1, 2, 3, 4]"


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


STEPS = token_steps()

V2_BUILT_IN = "KServe v2 is built into marfleet; TorchServe has no /v2 routes (404)"
CRASH_IS_500 = "an unexpected handler exception is 500 in marfleet, 503 in TorchServe"
# label -> why marfleet's answer differs (the same reason is in docs/moving-from-torchserve.md)
DELIBERATE = {
    "GET /v2/health/live": V2_BUILT_IN,
    "GET /v2/models/mlp": V2_BUILT_IN,
    "POST /explanations/mlp": CRASH_IS_500,
    "POST /v1/models/mlp:explain": CRASH_IS_500,
}


def deliberate(step: Step) -> str | None:
    """Why an authorised call may answer differently (refusals never may)."""
    authorised = step.key == "inference" and step.header == "Bearer {key}"
    for prefix, reason in DELIBERATE.items():
        if authorised and step.label.startswith(prefix):
            return reason
    return None


def normalise(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: normalise(item) for key, item in value.items() if key not in VOLATILE}
    if isinstance(value, list):
        return [normalise(item) for item in value]
    if isinstance(value, float):
        return round(value, 4)
    return value


VOLATILE = {"startTime", "pid", "memoryUsage", "id"}


def run(target: Target, steps: list[Step]) -> None:
    stale: dict[str, str] = {}
    for step in steps:
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
        try:
            body: Any = normalise(response.json())
        except ValueError:
            body = response.content
        if step.path in ("/api-description", "/"):
            body = None  # each server describes itself
        target.answers[step.label] = (response.status_code, body)


def build_store(root: Path) -> Path:
    store = root / "store"
    store.mkdir()
    write_torchscript(root)
    handler = write_handler(root, "mlp_handler", MLP_HANDLER)
    torch_model_archiver(
        "--model-name", "mlp", "-v", "1.0", "--export-path", store, "--handler", handler,
        "--serialized-file", root / "model.pt",
    )  # fmt: skip
    return store


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Target, Target]]:
    root = tmp_path_factory.mktemp("differential-api")
    store = build_store(root)
    torchserve = TorchServe(
        root / "torchserve", store, {"mlp": "mlp.mar"}, token_auth=True,
        properties={"enable_model_api": "true"},
    )  # fmt: skip
    try:
        torchserve.start()
        theirs = Target(torchserve.inference, torchserve.management, torchserve)
        run(theirs, STEPS)
    finally:
        torchserve.stop()
    properties = {
        "enable_model_api": "true",
        "disable_inference_token_authorization": "false",
        "default_workers_per_model": "1",
        "worker_threads": "1",
    }
    with serve(store, root / "marfleet", models=["mlp=mlp.mar"], properties=properties) as server:
        ours = Target(server.inference, server.management, server)
        run(ours, STEPS)
    yield theirs, ours


def test_every_call_answers_as_torchserve_answers(answers: tuple[Target, Target]) -> None:
    theirs, ours = answers
    differing = []
    for step in STEPS:
        reference, mine = theirs.answers[step.label], ours.answers[step.label]
        if mine != reference and deliberate(step) is None:
            differing.append(f"{step.label}: TorchServe {reference}, marfleet {mine}")
    assert not differing, "\n".join(differing)


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
