"""Serve request batches through marfleet's ModelService in a Python without TorchServe.

`run_without_torchserve` writes the batches to a JSON file and runs this module as a script
in `python_without_torchserve`, so handlers importing `ts` get marfleet's compatibility
package; the script answers with every result and with where `ts` came from. The script part
imports only the standard library and marfleet.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Call:
    """One request as a client sends it: to TorchServe over HTTP, or to ModelService."""

    body: bytes = b""
    content_type: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    form: dict[str, bytes] | None = None

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["body"] = base64.b64encode(self.body).decode()
        if self.form is not None:
            document["form"] = {k: base64.b64encode(v).decode() for k, v in self.form.items()}
        return document

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Call:
        form = document.get("form")
        return cls(
            body=base64.b64decode(document["body"]),
            content_type=document["content_type"],
            headers=document["headers"],
            form={k: base64.b64decode(v) for k, v in form.items()} if form is not None else None,
        )


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


def run_without_torchserve(
    scratch: Path,
    models: dict[str, Path],
    batches: list[tuple[str, list[Call], bool]],
    envelopes: dict[str, str] | None = None,
) -> tuple[dict[str, Any], list[list[Answer]]]:
    """(facts about `ts` in the child, answers per batch); batches are (model, calls, explain).
    The facts include `metrics`: the handler metrics recorded, in order, as lists."""
    from tests.torchserve_tools import python_without_torchserve

    spec = scratch / "batches.json"
    out = scratch / "answers.json"
    spec.write_text(
        json.dumps(
            {
                "models": {name: str(path) for name, path in models.items()},
                "envelopes": envelopes or {},
                "batches": [
                    {"model": model, "explain": explain, "calls": [c.to_json() for c in calls]}
                    for model, calls, explain in batches
                ],
            }
        )
    )
    command = [*python_without_torchserve(scratch), __file__, str(spec), str(out)]
    done = subprocess.run(command, cwd=scratch, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"marfleet runner failed:\n{done.stdout}\n{done.stderr}")
    document = json.loads(out.read_text())
    answers = [
        [
            Answer(a["status"], base64.b64decode(a["body"]), a["content_type"], a["headers"])
            for a in batch
        ]
        for batch in document.pop("answers")
    ]
    return document, answers


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def same_json(ours: Any, theirs: Any, tolerance: float = 1e-5) -> bool:
    """Equal JSON documents, numbers within `tolerance` (relative or absolute)."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        return ours.keys() == theirs.keys() and all(same_json(ours[k], theirs[k]) for k in ours)
    if isinstance(ours, list) and isinstance(theirs, list):
        return len(ours) == len(theirs) and all(map(same_json, ours, theirs))
    numbers = (int, float)
    if isinstance(ours, numbers) and isinstance(theirs, numbers) and not isinstance(ours, bool):
        return abs(ours - theirs) <= tolerance * max(1.0, abs(ours), abs(theirs))
    return bool(ours == theirs)


def serve_batches(
    models: dict[str, Path], batches: list[tuple[str, list[Call], bool]], envelopes: dict[str, str]
) -> tuple[list[list[Answer]], list[list[Any]]]:
    """Each batch through its model's ModelService in this process: (answers per batch, the
    handler metrics recorded as [name, value, unit, dimensions, kind])."""
    from marfleet.runtime.handlers.service import HandlerMetric, InferenceRequest, ModelService

    recorded: list[list[Any]] = []

    def sink(records: list[HandlerMetric]) -> None:
        recorded.extend([m.name, m.value, m.unit, m.dimensions, m.kind] for m in records)

    services = {
        name: ModelService.load(
            path, gpu_id=None, batch_size=4, envelope=envelopes.get(name, ""), metrics_sink=sink
        )
        for name, path in models.items()
    }
    answers = []
    for model, calls, explain in batches:
        requests = [
            InferenceRequest(f"req-{i}", c.body, c.content_type, lower(c.headers), {}, c.form)
            for i, c in enumerate(calls)
        ]
        results = services[model].handle(requests, explain=explain)
        answers.append([Answer(r.status, r.body, r.content_type, dict(r.headers)) for r in results])
    return answers, recorded


def main(spec_path: str, out_path: str) -> None:
    import torch

    torch.set_num_threads(1)
    ts_before = importlib.util.find_spec("ts") is not None
    spec = json.loads(Path(spec_path).read_text())
    batches = [
        (batch["model"], [Call.from_json(c) for c in batch["calls"]], batch["explain"])
        for batch in spec["batches"]
    ]
    models = {name: Path(path) for name, path in spec["models"].items()}
    answers, metrics = serve_batches(models, batches, spec["envelopes"])
    import ts

    facts = {
        "ts_installed_before": ts_before,
        "ts_file": ts.__file__,
        "metrics": metrics,
        "answers": [
            [
                {
                    "status": a.status,
                    "body": base64.b64encode(a.body).decode(),
                    "content_type": a.content_type,
                    "headers": a.headers,
                }
                for a in batch
            ]
            for batch in answers
        ],
    }
    Path(out_path).write_text(json.dumps(facts))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
