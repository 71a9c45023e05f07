"""The CRD file itself: documented, defaulted like the operator assumes, and shaped for kubectl.

What the apiserver refuses is tested against a real apiserver in
tests/integration/test_operator_crd.py; here only the file is read.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from marfleet.operator import render, spec

CRD_PATH = Path(__file__).resolve().parents[2] / "crds" / "inferenceservice.yaml"


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    return loaded


def schema(crd: dict[str, Any]) -> dict[str, Any]:
    version = crd["spec"]["versions"][0]
    result: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return result


def walk(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from walk(child, f"{path}.{name}")
    if "items" in node:
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def test_names_group_and_version(crd: dict[str, Any]) -> None:
    names = crd["spec"]["names"]
    assert crd["metadata"]["name"] == f"{spec.PLURAL}.{spec.GROUP}"
    assert (crd["spec"]["group"], names["kind"], names["plural"]) == (
        spec.GROUP,
        spec.KIND,
        spec.PLURAL,
    )
    assert names["shortNames"] == ["mfisvc"]
    assert names["categories"] == ["marfleet"]
    version = crd["spec"]["versions"][0]
    assert (version["name"], version["served"], version["storage"]) == (spec.VERSION, True, True)
    assert version["subresources"] == {"status": {}}


def test_printer_columns(crd: dict[str, Any]) -> None:
    columns = {
        c["name"]: c["jsonPath"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]
    }
    assert columns == {
        "Ready": '.status.conditions[?(@.type=="Ready")].status',
        "URL": ".status.url",
        "Variants": ".status.traffic",
        "Reason": '.status.conditions[?(@.type=="Ready")].reason',
        "Age": ".metadata.creationTimestamp",
    }


def test_every_field_is_described(crd: dict[str, Any]) -> None:
    undocumented = [
        path
        for path, node in walk(schema(crd), "")
        if path != ".metadata" and not node.get("description")
    ]
    assert undocumented == []


def test_schema_is_structural(crd: dict[str, Any]) -> None:
    for path, node in walk(schema(crd), ""):
        typed = "type" in node or node.get("x-kubernetes-int-or-string")
        assert typed, f"{path} has no type"


def test_variants_are_bounded(crd: dict[str, Any]) -> None:
    variants = schema(crd)["properties"]["spec"]["properties"]["variants"]
    assert (variants["minItems"], variants["maxItems"]) == (1, 8)
    assert variants["items"]["properties"]["weight"]["maximum"] == 100


def test_enums_match_what_the_operator_renders(crd: dict[str, Any]) -> None:
    autoscaling = schema(crd)["properties"]["spec"]["properties"]["autoscaling"]["properties"]
    metrics = autoscaling["metric"]["enum"]
    assert set(metrics) == set(render.HPA_METRICS) | {"cpu"} == set(spec.TARGET_DEFAULTS)
    assert autoscaling["engine"]["enum"] == ["hpa", "keda", "none"]


def defaults(node: dict[str, Any]) -> Any:
    """The object the apiserver's defaulting makes of an empty value at this node."""
    if node.get("type") == "object" and "properties" in node:
        base = dict(node.get("default") or {})
        for name, child in node["properties"].items():
            value = defaults(child) if name not in base else base[name]
            if value is not None:
                base[name] = value
        return base if "default" in node else (base or None)
    return node.get("default")


def test_operator_defaults_equal_crd_defaults(crd: dict[str, Any]) -> None:
    """A minimal object parsed by the operator equals the same object defaulted by the CRD."""
    spec_schema = schema(crd)["properties"]["spec"]
    defaulted = defaults(spec_schema)
    variant = {"name": "a", "model": {"uri": "https://h/m.mar"}}
    minimal = {"metadata": {"name": "x"}, "spec": {"variants": [variant]}}
    full = {"metadata": {"name": "x"}, "spec": {**defaulted, "variants": [variant]}}
    assert spec.parse(minimal) == spec.parse(full)
    assert defaulted["autoscaling"] == {
        "minReplicas": 1,
        "maxReplicas": 10,
        "metric": "requestsPerSecond",
        "engine": "hpa",
        "scaleDownStabilizationSeconds": 300,
    }
    assert defaulted["runtime"] == {
        "workersPerDevice": 1,
        "batching": {"maxBatchSize": 8, "maxBatchDelayMs": 5},
        "queueSize": 1000,
        "responseTimeoutSeconds": 120,
    }
    assert defaulted["resources"]["accelerator"] == {"count": 0, "resourceName": "nvidia.com/gpu"}
