"""marfleet's request envelopes against TorchServe 0.12's own (installed in the dev venv): the same
rows in, the same handler, the same rows seen by the handler and the same answers out."""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from marfleet.runtime import ts_compat
from marfleet.runtime.config import SERVICE_ENVELOPES, ConfigError, load_server_config
from marfleet.runtime.handlers.context import Context, RequestProcessor
from marfleet.runtime.handlers.envelopes import ENVELOPES, wrap
from marfleet.runtime.handlers.errors import ModelLoadError

MANIFEST = {"model": {"modelName": "m", "modelVersion": "2.0"}}
V2 = {
    "id": "r-1",
    "inputs": [
        {"name": "a", "shape": [2, 2], "datatype": "INT64", "data": [1, 2, 3, 4]},
        {"name": "b", "shape": [1], "datatype": "BYTES", "data": ["word"]},
        {"name": "c", "shape": [2], "datatype": "FP32", "data": [0.5, 1.5]},
    ],
}


def context(batch: int, explain: bool = False) -> Context:
    ctx = Context("m", "/nowhere", MANIFEST, batch, None, "0")
    ctx.request_ids = {index: f"req-{index}" for index in range(batch)}
    ctx.request_processor = [
        RequestProcessor({"explain": "True" if explain else "False"}) for _ in range(batch)
    ]
    return ctx


def torchserve_envelope(name: str) -> type:
    module = importlib.import_module(f"ts.torch_handler.request_envelope.{name}")
    classes = [
        value
        for value in vars(module).values()
        if isinstance(value, type) and value.__module__ == module.__name__
    ]
    assert len(classes) == 1
    return classes[0]


def both(name: str, rows: list[Any], handler: Any, explain: bool = False) -> list[Any]:
    """[(rows the handler saw, answer)] for TorchServe's envelope, then marfleet's."""
    outcomes = []
    for make in (lambda fn: torchserve_envelope(name)(fn).handle, lambda fn: wrap(name, fn)):
        seen: list[Any] = []

        def recording(data: Any, ctx: Context, seen: list[Any] = seen) -> Any:
            seen.append(copy.deepcopy(data))
            return handler(data, ctx)

        answer = make(recording)(copy.deepcopy(rows), context(len(rows), explain))
        outcomes.append((seen, json.loads(json.dumps(answer))))
    return outcomes


def describe(data: Any, ctx: Context) -> list[Any]:
    return [{"got": row} for row in data]


def sizes(data: Any, ctx: Context) -> list[Any]:
    return [[type(row).__name__, len(row)] for row in data]


def names(data: Any, ctx: Context) -> list[Any]:
    """What TorchServe's kservev2 envelope leaves on the context for the handler."""
    left = [getattr(ctx, "input_names", None), getattr(ctx, "input_request_id", None)]
    return [json.dumps(left)] * len(data)


def numbers(data: Any, ctx: Context) -> list[Any]:
    return [[1.5, 2.5], [True, False], 7][: len(data)]


@pytest.mark.parametrize(
    ("name", "rows", "handler", "explain"),
    [
        ("kservev2", [{"body": V2}], describe, False),
        ("kservev2", [{"body": json.dumps(V2).encode()}], numbers, False),
        ("kservev2", [{"data": {"inputs": V2["inputs"]}}], numbers, True),
        ("kservev2", [{"body": V2}], names, False),
        ("kserve", [{"body": {"instances": [[1, 2], [3, 4]]}}], describe, False),
        ("kserve", [{"body": b'{"instances": ["x"]}'}], describe, True),
        ("json", [{"body": {"instances": [{"b64": "aGk="}, {"b64": "eW8="}]}}], sizes, False),
        ("json", [{"body": {"instances": [1, 2]}}, {"body": {"instances": [3]}}], describe, False),
        ("body", [{"body": "a"}, {"data": b"bc"}], sizes, False),
    ],
)
def test_the_same_rows_and_answers_as_torchserve(
    name: str, rows: list[Any], handler: Any, explain: bool
) -> None:
    theirs, ours = both(name, rows, handler, explain)
    assert ours == theirs
    assert ours[1]  # the handler answered something


def test_kservev2_answers_one_response_for_the_first_request_only() -> None:
    rows = [{"body": V2}, {"body": {"id": "r-2", "inputs": V2["inputs"][:1]}}]
    theirs, ours = both("kservev2", rows, describe)
    assert ours == theirs
    seen, answer = ours
    assert [row["name"] for row in seen[0]] == ["a", "b", "c"]
    assert len(answer) == 1 and answer[0]["id"] == "r-1"  # so a batch of 2 gets a count mismatch


def test_kservev2_names_the_request_id_when_the_request_has_none() -> None:
    theirs, ours = both("kservev2", [{"body": {"inputs": V2["inputs"]}}], numbers)
    assert ours == theirs
    assert ours[1][0]["id"] == "req-0"
    assert [o["datatype"] for o in ours[1][0]["outputs"]] == ["FP64", "BOOL", "INT64"]


def test_every_envelope_torchserve_has_and_only_those() -> None:
    assert set(ENVELOPES) == set(SERVICE_ENVELOPES) == {"body", "json", "kserve", "kservev2"}
    assert wrap("", describe) is describe
    with pytest.raises(ModelLoadError, match="not one of TorchServe's envelopes"):
        wrap("kservev3", describe)


def test_service_envelope_in_config_properties() -> None:
    assert load_server_config({"service_envelope": "kservev2"}, {}).service_envelope == "kservev2"
    assert load_server_config({}, {}).service_envelope == ""
    from_env = load_server_config(
        {"enable_envvars_config": "true"}, {"TS_SERVICE_ENVELOPE": "json"}
    )
    assert from_env.service_envelope == "json"  # how an InferenceService sets it (runtime.env)
    with pytest.raises(ConfigError, match="service_envelope=kservev3: must be one of body"):
        load_server_config({"service_envelope": "kservev3"}, {})


def test_the_ts_shim_offers_the_envelope_modules() -> None:
    """Without TorchServe, `ts.torch_handler.request_envelope.<name>` are marfleet's classes."""
    folder = Path(ts_compat.SHIM_ROOT) / "ts" / "torch_handler" / "request_envelope"
    for name, envelope in ENVELOPES.items():
        spec = importlib.util.spec_from_file_location(f"shim_{name}", folder / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert getattr(module, envelope.__name__) is envelope
        assert envelope.__name__ == torchserve_envelope(name).__name__
