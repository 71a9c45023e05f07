"""The model store the server tests share, made with the real torch-model-archiver.

echo (1.0 and 2.0), slow, victim: the `behaviour` test handler with different model-config.yaml
settings; mlp: a random-weight TorchScript TinyMLP (its model-config.yaml declares its v2
tensors); loadfail: a handler that cannot initialise;
stream: a handler that answers in parts (intermediate responses);
broken.mar: bytes that are no archive at all.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.models import TinyMLP, write_torchscript
from tests.serving import archive

HANDLERS = Path(__file__).parent / "server_handlers"


# KServe v2 model metadata, as an archive declares it (docs/runtime-api.md)
MLP_TENSORS: dict[str, object] = {
    "inputs": [{"name": "input-0", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, 3]}],
}


def _config(directory: Path, name: str, settings: dict[str, object]) -> Path:
    path = directory / f"{name}-config.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def build_store(root: Path) -> Path:
    store = root / "store"
    work = root / "work"
    store.mkdir()
    work.mkdir()
    behaviour = HANDLERS / "behaviour.py"
    echo_config = _config(work, "echo", {"batchSize": 4, "maxBatchDelay": 300, "minWorkers": 1})
    archive(store, "echo", behaviour, config_file=echo_config)
    second = work / "v2"
    second.mkdir()
    archive(second, "echo", behaviour, version="2.0", config_file=echo_config)
    (second / "echo.mar").rename(store / "echo-v2.mar")
    slow_config = _config(
        work,
        "slow",
        {"batchSize": 1, "maxBatchDelay": 1, "jobQueueSize": 2, "responseTimeout": 3},
    )
    archive(store, "slow", behaviour, config_file=slow_config)
    archive(store, "victim", behaviour)
    weights = write_torchscript(work, TinyMLP)
    archive(
        store, "mlp", HANDLERS / "mlp.py", serialized_file=weights,
        config_file=_config(work, "mlp", MLP_TENSORS),
    )  # fmt: skip
    archive(store, "loadfail", HANDLERS / "failing.py")
    stream_config = _config(work, "stream", {"batchSize": 1, "maxBatchDelay": 1})
    archive(store, "stream", HANDLERS / "streaming.py", config_file=stream_config)
    (store / "broken.mar").write_bytes(b"this is not a model archive" * 10)
    return store
