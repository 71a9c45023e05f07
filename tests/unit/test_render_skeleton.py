"""Rendering through cached YAML skeletons gives exactly what parsing each rendered manifest
in full gives (the reference), for every example and a spread of specs; and a template that
uses a `json` value inside a longer string is refused rather than rendered wrong."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from marfleet.operator import render, spec
from marfleet.operator.compare import intent_hash
from marfleet.operator.labels import INTENT_HASH

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
KEDA = render.RenderContext(
    default_image="img",
    keda_installed=True,
    service_monitor_installed=True,
    service_monitor_labels={"release": "prom"},
    keda_authentication_ref="prom-auth",
)


class _NotRecording:
    """Stands in for render._RECORDING: the `json` filter then inserts the real JSON, so each
    manifest is parsed in full (the reference)."""

    def set(self, _: object) -> None:
        return None

    def reset(self, _: object) -> None:
        return None

    def get(self) -> None:
        return None


def minimal(**fields: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "bert", "namespace": "nlp", "uid": "u", "generation": 2},
        "spec": {
            "variants": [
                {"name": "a", "weight": 60, "model": {"uri": "pvc://claim/models/a.mar"}},
                {
                    "name": "b",
                    "weight": 40,
                    "model": {"uri": "https://h/b.mar", "sha256": "0" * 64},
                },
            ],
            **fields,
        },
    }


def specs() -> list[dict[str, Any]]:
    found = [
        d
        for path in EXAMPLES
        for d in yaml.safe_load_all(path.read_text())
        if d and d.get("kind") == spec.KIND
    ]
    for obj in found:
        obj["metadata"].setdefault("namespace", "default")
        obj["metadata"].setdefault("uid", "u")
    return [
        *found,
        minimal(),
        minimal(autoscaling={"engine": "none", "minReplicas": 3}),
        minimal(autoscaling={"engine": "keda", "metric": "inflightRequests"}),
        minimal(autoscaling={"engine": "hpa", "metric": "cpu", "minReplicas": 2}),
        minimal(
            resources={
                "requests": {"cpu": "500m", "memory": "1Gi"},
                "limits": {"memory": "2Gi"},
                "accelerator": {"count": 2, "products": ["NVIDIA-H100-80GB-HBM3"]},
            },
            scheduling={
                "nodeSelector": {"pool": "gpu"},
                "tolerations": [{"key": "dedicated", "operator": "Exists"}],
                "priorityClassName": "inference",
            },
            runtime={
                "env": [{"name": "LANG", "value": 'C.UTF-8 ünïcode: "quoted" # not a comment'}]
            },
        ),
    ]


@pytest.mark.parametrize("ctx", [render.RenderContext(default_image="img"), KEDA])
@pytest.mark.parametrize("ready", [False, True])
def test_skeletons_render_what_full_parsing_renders(
    ctx: render.RenderContext, ready: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = [render.render(spec.parse(obj), ctx, router_ready=ready) for obj in specs()]
    monkeypatch.setattr(render, "_RECORDING", _NotRecording())
    reference = [render.render(spec.parse(obj), ctx, router_ready=ready) for obj in specs()]
    assert len(fast) == len(reference) > 6
    for got, want in zip(fast, reference, strict=True):
        assert got.objects == want.objects


def test_renders_do_not_share_anything_mutable() -> None:
    isvc = spec.parse(minimal())
    ctx = render.RenderContext(default_image="img")
    first = render.render(isvc, ctx)
    first.objects[0]["metadata"]["labels"]["touched"] = "yes"
    first.objects[1]["spec"]["template"]["spec"]["containers"][0]["env"].clear()
    second = render.render(isvc, ctx)
    assert "touched" not in second.objects[0]["metadata"]["labels"]
    assert second.objects[1]["spec"]["template"]["spec"]["containers"][0]["env"]


def test_a_value_inside_a_longer_string_is_a_template_error(tmp_path: Path) -> None:
    recorded: list[Any] = []
    token = render._RECORDING.set(recorded)
    try:
        text = f"name: prefix-{render._json_filter('x')}"
    finally:
        render._RECORDING.reset(token)
    with pytest.raises(ValueError, match="inside a longer string"):
        render._fill(yaml.safe_load(text), recorded)


def test_intent_hashes_are_those_of_the_standard_json_text() -> None:
    """Live objects carry hashes of `json.dumps(sort_keys=True)` text from earlier versions:
    the faster encoder must give the same hash for every example and spec, non-ASCII text
    included, or an upgrade would re-apply every child."""
    ctx = render.RenderContext(default_image="img")
    objects = [o for obj in specs() for o in render.render(spec.parse(obj), ctx).objects]
    assert any("\\u" in json.dumps(o) for o in objects)  # non-ASCII text is among them
    for obj in objects:
        annotations = {k: v for k, v in obj["metadata"]["annotations"].items() if k != INTENT_HASH}
        manifest = {**obj, "metadata": {**obj["metadata"], "annotations": annotations}}
        text = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
        assert intent_hash(obj) == hashlib.sha256(text.encode()).hexdigest()[:20]
