"""The peer benchmark's pure parts: each server's request for the same input, and that a
failing round or server is recorded rather than ending the run."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest

from e2e.bench import run
from e2e.bench.run import interleaved
from e2e.bench.servers import request_for

ROW = b"[0.0, 0.5]"
JPEG = b"\xff\xd8 not really a jpeg"


def test_every_server_gets_the_same_input_in_its_own_documented_format() -> None:
    marfleet = request_for("marfleet", "resnet_b8", ROW, JPEG)
    assert (marfleet.path, marfleet.body, marfleet.content_type) == (
        "/predictions/resnet_b8",
        JPEG,
        "image/jpeg",
    )
    assert request_for("ray", "mlp", ROW, JPEG).path == "/mlp"
    kserve = request_for("kserve", "resnet_b1", ROW, JPEG)
    assert kserve.path == "/v1/models/resnet_b1:predict"
    (instance,) = json.loads(kserve.body)["instances"]
    assert base64.b64decode(instance["image"]["b64"]) == JPEG
    assert json.loads(request_for("kserve", "mlp", ROW, JPEG).body) == {"instances": [[0.0, 0.5]]}
    litserve = request_for("litserve", "resnet_b1", ROW, JPEG)
    assert base64.b64decode(json.loads(litserve.body)["image"]) == JPEG
    assert json.loads(request_for("litserve", "mlp", ROW, JPEG).body) == {"input": [0.0, 0.5]}


def test_a_failing_round_is_recorded_and_the_medians_use_the_rounds_that_completed() -> None:
    order: list[str] = []

    def measure(name: str) -> dict[str, object]:
        order.append(name)
        if name == "b" and order.count("b") == 2:
            raise subprocess.CalledProcessError(1, ["loadgen"], stderr="connection refused")
        if name == "c":
            raise OSError("server gone")
        return {"rps": 10.0 * order.count(name), "errors": {"503": 1}}

    summary = interleaved(3, measure, ["a", "b", "c"])
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # who goes first rotates
    assert summary["a"]["rps"] == 20.0 and summary["a"]["errors"] == 3
    assert summary["b"]["failed_rounds"] == 1 and summary["b"]["rps"] == 20.0
    assert summary["b"]["rounds"][1] == {"failed": "connection refused"}
    assert summary["c"]["failed"] == "server gone"


class _Started:
    def __init__(self, workdir: Path) -> None:
        self.workdir, self.paused = workdir, False

    def pause(self) -> None:
        self.paused = True


def test_a_server_that_fails_to_start_gets_one_more_try_in_a_fresh_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A port taken between picking and binding cannot be caused on demand: `_start_one`
    stands in for the real start here, failing where the test says."""
    tries: list[tuple[str, Path]] = []

    def start_one(name: str, models: object, store: object, workdir: Path, *rest: object) -> object:
        tries.append((name, workdir))
        if (name == "torchserve" and len(tries) == 1) or name == "marfleet":
            raise RuntimeError(f"{name} exited with 1; the end of its log")
        return _Started(workdir)

    monkeypatch.setattr(run, "_start_one", start_one)
    servers: dict[str, object] = {}
    failed = run.start_all(
        ["torchserve", "marfleet", "ray"],
        ["mlp"],
        tmp_path,
        tmp_path,
        None,
        servers,  # type: ignore[arg-type]
    )
    assert tries == [
        ("torchserve", tmp_path / "torchserve"),
        ("torchserve", tmp_path / "torchserve-2"),
        ("marfleet", tmp_path / "marfleet"),
        ("marfleet", tmp_path / "marfleet-2"),
    ]
    assert list(servers) == ["torchserve"] and servers["torchserve"].paused  # type: ignore[attr-defined]
    assert failed == {
        "marfleet": "marfleet exited with 1; the end of its log",
        "ray": "ray needs --peer-venv",
    }
