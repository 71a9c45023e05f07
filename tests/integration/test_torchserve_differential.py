"""Differential test: real TorchServe 0.12 and marfleet give the same answers for the same
archives and requests.

The archives are packed by `marfleet archive` (so this also shows that TorchServe loads what
marfleet writes, `.mar` and `.tar.gz`) and served by one TorchServe started for the module. The
marfleet side runs in a Python without TorchServe, so custom handlers use marfleet's `ts`
compatibility package and built-in names use marfleet's own handlers. Compared per request:
status, content type, the headers the handler set, and the body (JSON to float tolerance).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from marfleet.runtime.archive.cli import main as marfleet_archive
from marfleet.runtime.archive.reader import load_archive
from marfleet.runtime.handlers.defaults.vision_handler import imagenet_transform

from tests.handler_sources import (
    CONTRACT_HANDLER,
    ECHO_HANDLER,
    FUNCTION_HANDLER,
    MLP_HANDLER,
    MNIST_HANDLER,
    TOP_TWO_HANDLER,
    write_handler,
)
from tests.marfleet_runner import Answer, Call, run_without_torchserve, same_json
from tests.models import (
    TinyDigitClassifier,
    TinyImageClassifier,
    image_bytes,
    write_eager,
    write_index_to_name,
    write_torchscript,
)
from tests.torchserve_tools import TorchServe, torch_model_archiver

pytestmark = pytest.mark.slow

JSON = "application/json"
PNG = image_bytes("PNG", seed=1)


def image_as_nested_list() -> bytes:
    from io import BytesIO

    from PIL import Image

    tensor = imagenet_transform()(Image.open(BytesIO(image_bytes(seed=4))))
    return json.dumps(torch.round(tensor, decimals=3).tolist()).encode()


# model -> [(explain?, call)]; each call is one request, answered alone by both servers.
CALLS: dict[str, list[tuple[bool, Call]]] = {
    "mlp": [
        (False, Call(b"[1, 2, 3, 4]", JSON)),
        (False, Call(b"[0.5, -1.0, 2.0, 0.0]", JSON)),
        (False, Call(b'{"not": "a list"}', JSON)),
    ],
    "classifier": [
        (False, Call(PNG, "image/png")),
        (False, Call(image_bytes("JPEG", seed=2), "image/jpeg")),
        (False, Call(base64.b64encode(image_bytes(seed=3)), "text/plain")),
        (False, Call(image_as_nested_list(), JSON)),
    ],
    "top2": [(False, Call(PNG, "image/png"))],
    "fn": [(False, Call(b"[1, 2, 3, 4]", JSON)), (False, Call(b"words", "text/plain"))],
    "echo": [
        (False, Call(b'{"a": [1, 2]}', "application/json; charset=utf-8", {"X-Custom": "hi"})),
        (False, Call(b"hello", "text/plain")),
        (False, Call(b"\x00\x01binary", "application/octet-stream")),
        (False, Call(form={"data": b"\x89PNG...", "name": b"value"})),
        (True, Call(b"why?", "text/plain")),
    ],
    "mnist": [
        (False, Call(image_bytes(size=(28, 28), seed=seed, mode="L"), "image/png"))
        for seed in (6, 7, 8)
    ],
    "contract": [
        (False, Call(mode.encode(), "text/plain"))
        for mode in ("prediction-exception", "memory", "cuda", "too-many", "not-a-list", "teapot")
    ],
}


def pack(folder: Path, store: Path) -> dict[str, str]:
    """Pack every model with `marfleet archive`, the grayscale one (TorchServe's MNIST example)
    with the real torch-model-archiver; model name -> archive file name."""
    write_torchscript(folder)
    write_eager(folder, TinyImageClassifier, stem="classifier")
    labels = str(write_index_to_name(folder, 10))
    handler = {
        name: str(write_handler(folder, name, source).with_suffix(""))
        for name, source in [
            ("mlp_handler", MLP_HANDLER),
            ("top_two", TOP_TWO_HANDLER),
            ("fn_handler", FUNCTION_HANDLER),
            ("echo_handler", ECHO_HANDLER),
            ("contract_handler", CONTRACT_HANDLER),
        ]
    }
    torchscript = ["--serialized-file", str(folder / "model.pt")]
    eager = ["--model-file", str(folder / "classifier.py")]
    eager += ["--serialized-file", str(folder / "classifier.pth"), "--extra-files", labels]
    flags = {
        "mlp": [*torchscript, "--handler", f"{handler['mlp_handler']}.py"],
        "classifier": [*eager, "--handler", "image_classifier"],
        "top2": [*eager, "--handler", handler["top_two"]],
        "fn": [
            *torchscript,
            "--handler",
            f"{handler['fn_handler']}:infer",
            "--archive-format",
            "tgz",
        ],
        "echo": ["--handler", f"{handler['echo_handler']}:handle", "--archive-format", "zip-store"],
        "contract": ["--handler", handler["contract_handler"]],
    }
    for name, extra in flags.items():
        argv = ["--model-name", name, "-v", "1.0", "--export-path", str(store), *extra]
        assert marfleet_archive(argv) == 0
    mnist = write_handler(folder, "mnist_handler", MNIST_HANDLER)
    digits, digit_weights = write_eager(folder, TinyDigitClassifier, stem="digits")
    mnist_flags: list[str | Path] = ["--model-name", "mnist", "-v", "1.0", "--handler", mnist]
    mnist_flags += ["--model-file", digits, "--serialized-file", digit_weights]
    torch_model_archiver(*mnist_flags, "--export-path", store)
    archives = {name: f"{name}.tar.gz" if name == "fn" else f"{name}.mar" for name in flags}
    return {**archives, "mnist": "mnist.mar"}


def ask_torchserve(server: TorchServe, model: str, explain: bool, call: Call) -> Answer:
    path = f"/{'explanations' if explain else 'predictions'}/{model}"
    headers = dict(call.headers)
    if call.form is not None:
        files = {"data": ("upload.bin", call.form["data"], "application/octet-stream")}
        data = {name: value.decode() for name, value in call.form.items() if name != "data"}
        response = server.post(path, headers=headers, files=files, data=data)
    else:
        headers["Content-Type"] = call.content_type
        response = server.post(path, call.body, headers=headers)
    return Answer(
        response.status_code,
        response.content,
        response.headers.get("content-type", ""),
        dict(response.headers),
    )


@pytest.fixture(scope="module")
def answers(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, list[tuple[Answer, Answer]]]]:
    """model -> [(TorchServe's answer, marfleet's answer)] for every call in CALLS."""
    root = tmp_path_factory.mktemp("differential")
    store = root / "store"
    store.mkdir()
    archives = pack(root, store)
    model_dirs = {
        name: load_archive(store / file, root / "marfleet" / name).model_dir
        for name, file in archives.items()
    }
    batches = [
        (model, [call], explain) for model, calls in CALLS.items() for explain, call in calls
    ]
    _, marfleet = run_without_torchserve(root, model_dirs, batches)
    server = TorchServe(root / "torchserve", store, archives)
    try:
        server.start()
        theirs = [
            ask_torchserve(server, model, explain, calls[0]) for model, calls, explain in batches
        ]
    finally:
        server.stop()
    paired: dict[str, list[tuple[Answer, Answer]]] = {model: [] for model in CALLS}
    for (model, _, _), reference, (mine,) in zip(batches, theirs, marfleet, strict=True):
        paired[model].append((reference, mine))
    yield paired


def assert_same(reference: Answer, mine: Answer) -> None:
    assert mine.status == reference.status, (reference.body, mine.body)
    assert mine.content_type == reference.content_type
    for name, value in mine.headers.items():
        assert httpx.Headers(reference.headers).get(name) == value
    if reference.status != 200 or not mine.body.startswith(b"{"):
        assert mine.body == reference.body
        return
    assert same_json(mine.json(), reference.json()), (mine.body, reference.body)


@pytest.mark.parametrize("model", list(CALLS))
def test_same_answers_as_torchserve(
    answers: dict[str, list[tuple[Answer, Answer]]], model: str
) -> None:
    pairs = answers[model]
    assert len(pairs) == len(CALLS[model])
    for reference, mine in pairs:
        assert_same(reference, mine)


def test_the_differences_checked_are_not_vacuous(
    answers: dict[str, list[tuple[Answer, Answer]]],
) -> None:
    statuses = {model: [ts.status for ts, _ in pairs] for model, pairs in answers.items()}
    assert statuses["mlp"] == [200, 200, 400]
    assert statuses["fn"] == [200, 422]
    assert statuses["contract"] == [422, 507, 507, 503, 503, 418]
    assert len(answers["classifier"][0][0].json()) == 5
    assert [ts.status for ts, _ in answers["mnist"]] == [200, 200, 200]
    echo_form = answers["echo"][3][0].json()
    assert echo_form["row"] == {"data": ["bytes", "\x89PNG..."], "name": ["bytes", "value"]}
