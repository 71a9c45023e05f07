"""ModelService: loading, and the batch contract with every status it promises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from marfleet.runtime.handlers.errors import ModelLoadError
from marfleet.runtime.handlers.metrics import HandlerMetric
from marfleet.runtime.handlers.service import InferenceRequest, InferenceResult, ModelService

from tests.models import write_model_dir

# One handler whose behaviour each request picks with its text body.
CONTRACT_HANDLER = """
import torch
from marfleet.runtime.handlers.errors import PredictionException

def handle(data, context):
    if data is None:
        context.metrics.add_counter("Initialised", 1)
        return None
    mode = data[0]["body"]
    if mode == "prediction-exception":
        raise PredictionException("the input is not a cat", 422)
    if mode == "memory":
        raise MemoryError()
    if mode == "cuda":
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    if mode == "crash":
        raise ValueError("boom")
    if mode == "too-many":
        return [1] * (len(data) + 1)
    if mode == "not-a-list":
        return "oops"
    if mode == "unserialisable":
        return [object() for _ in data]
    if mode == "circular":
        loop = []
        loop.append(loop)
        return [loop for _ in data]
    results = []
    for index, row in enumerate(data):
        context.metrics.add_time("RowTime", 1.0, None, "ms")
        context.set_response_header(index, "X-Index", str(index))
        if row["body"] == "teapot":
            context.set_response_status(418, "short and stout", index)
        if row["body"] == "csv":
            context.set_response_content_type(index, "text/csv")
            results.append("a,b")
            continue
        results.append({"body": row["body"], "trace": context.get_request_header(index, "X-Trace"),
                        "explain": context.get_request_header(index, "explain")})
    return results
"""

ECHO_HANDLER = "def handle(data, context):\n    return data\n"


def text(body: str, request_id: str = "r") -> InferenceRequest:
    return InferenceRequest(request_id, body.encode(), "text/plain", {"x-trace": "t1"}, {})


@pytest.fixture
def service(tmp_path: Path) -> tuple[ModelService, list[HandlerMetric]]:
    model_dir = write_model_dir(
        tmp_path / "contract",
        "contract_handler:handle",
        files={"contract_handler.py": CONTRACT_HANDLER, "model-config.yaml": "minWorkers: 2\n"},
        model={"configFile": "model-config.yaml", "modelVersion": "2.1"},
    )
    sink: list[HandlerMetric] = []
    loaded = ModelService.load(model_dir, gpu_id=None, batch_size=4, metrics_sink=sink.extend)
    return loaded, sink


def error_of(result: InferenceResult) -> dict[str, object]:
    assert result.content_type == "application/json"
    document: dict[str, object] = json.loads(result.body)
    return document


def test_load_builds_torchserves_context(service: tuple[ModelService, list[HandlerMetric]]) -> None:
    loaded, sink = service
    assert (loaded.model_name, loaded.model_version) == ("contract", "2.1")
    assert loaded.manifest["model"]["handler"] == "contract_handler:handle"
    properties = loaded.context.system_properties
    assert properties["batch_size"] == 4
    assert properties["gpu_id"] is None
    assert properties["server_name"] == "marfleet"
    assert properties["limit_max_image_pixels"] == 933120000
    assert Path(properties["model_dir"]).name == "contract"
    assert loaded.context.model_yaml_config == {"minWorkers": 2}
    assert [metric.name for metric in sink] == ["Initialised"]


def test_a_good_batch_gets_one_result_per_request_in_order(
    service: tuple[ModelService, list[HandlerMetric]],
) -> None:
    loaded, sink = service
    sink.clear()
    results = loaded.handle([text("hello", "a"), text("teapot", "b"), text("csv", "c")])
    assert [r.status for r in results] == [200, 418, 200]
    assert json.loads(results[0].body) == {"body": "hello", "trace": "t1", "explain": "False"}
    assert results[0].body.startswith(b'{\n  "body"')
    assert (results[0].content_type, results[0].headers) == ("", {"X-Index": "0"})
    assert (results[2].body, results[2].content_type) == (b"a,b", "text/csv")
    assert results[2].headers == {"X-Index": "2"}
    assert loaded.context.get_request_id(1) == "b"
    assert [m.name for m in sink] == ["RowTime"] * 3 + ["PredictionTime"]


def test_explain_reaches_the_handler_as_torchserves_header(
    service: tuple[ModelService, list[HandlerMetric]],
) -> None:
    loaded, _ = service
    (result,) = loaded.handle([text("why")], explain=True)
    assert json.loads(result.body)["explain"] == "True"


@pytest.mark.parametrize(
    ("mode", "status", "message"),
    [
        ("too-many", 503, "number of batch response mismatched"),
        ("not-a-list", 503, "Invalid model predict output"),
        ("unserialisable", 503, "Unsupported model output data type."),
        ("circular", 503, "Unsupported model output data type."),
        ("prediction-exception", 422, "the input is not a cat"),
        ("memory", 507, "Out of resources"),
        ("cuda", 507, "Out of resources"),
        ("crash", 500, "Prediction failed"),
    ],
)
def test_each_contract_violation_fails_every_request_of_the_batch(
    service: tuple[ModelService, list[HandlerMetric]], mode: str, status: int, message: str
) -> None:
    loaded, _ = service
    results = loaded.handle([text(mode, "a"), text("fine", "b")])
    assert [r.status for r in results] == [status, status]
    for result in results:
        assert error_of(result) == {
            "code": status,
            "type": "InternalServerException",
            "message": message,
        }


def test_a_malformed_request_fails_its_batch_instead_of_raising(
    service: tuple[ModelService, list[HandlerMetric]],
) -> None:
    loaded, _ = service
    malformed = InferenceRequest("r", b"x", "text/plain", None, {})  # type: ignore[arg-type]
    (result,) = loaded.handle([malformed])
    assert (result.status, error_of(result)["message"]) == (500, "Prediction failed")


def test_an_empty_batch_calls_nothing(service: tuple[ModelService, list[HandlerMetric]]) -> None:
    loaded, sink = service
    sink.clear()
    assert loaded.handle([]) == []
    assert sink == []


def test_model_name_can_be_overridden(tmp_path: Path) -> None:
    model_dir = write_model_dir(
        tmp_path / "m", "h", files={"h.py": "def handle(d, c):\n    return d\n"}
    )
    loaded = ModelService.load(model_dir, model_name="renamed", gpu_id=None, batch_size=1)
    assert loaded.context.model_name == "renamed"


def test_a_folder_without_manifest_cannot_load(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"MANIFEST\.json is missing"):
        ModelService.load(tmp_path, gpu_id=None, batch_size=1)


def test_a_handler_failing_to_initialise_is_reported_with_its_reason(tmp_path: Path) -> None:
    source = "def handle(data, context):\n    raise RuntimeError('weights are corrupt')\n"
    model_dir = write_model_dir(tmp_path / "m", "broken", files={"broken.py": source})
    with pytest.raises(
        ModelLoadError, match=r"'broken' failed to load \(RuntimeError\): weights are"
    ):
        ModelService.load(model_dir, gpu_id=None, batch_size=1)


def test_an_unreadable_model_config_is_reported(tmp_path: Path) -> None:
    model_dir = write_model_dir(
        tmp_path / "m",
        "h",
        files={"h.py": ECHO_HANDLER, "bad.yaml": "a: [unclosed\n"},
        model={"configFile": "bad.yaml"},
    )
    with pytest.raises(
        ModelLoadError, match=r"model-config file bad\.yaml is not valid YAML at line"
    ):
        ModelService.load(model_dir, gpu_id=None, batch_size=1)
