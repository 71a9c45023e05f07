"""The chart's static files: one CRD source of truth, dashboard specs that name only metrics
the components promise, values defaults that agree with their schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from e2e.prometheus import contract, promql
from e2e.prometheus.chart import CHART_DIR, REPO_ROOT

CRD_SOURCE = REPO_ROOT / "crds" / "inferenceservice.yaml"
DASHBOARD_SPECS = sorted((CHART_DIR / "dashboards").glob("*.yaml"))


def test_the_chart_ships_the_crd_from_crds_unchanged() -> None:
    shipped = sorted((CHART_DIR / "crds").iterdir())
    assert [p.name for p in shipped] == [CRD_SOURCE.name]
    assert shipped[0].read_bytes() == CRD_SOURCE.read_bytes(), (
        "charts/marfleet/crds/inferenceservice.yaml differs from crds/inferenceservice.yaml; "
        "it must be the symlink to it (ln -sfn ../../../crds/inferenceservice.yaml)"
    )


def test_there_are_the_three_dashboards() -> None:
    titles = {yaml.safe_load(p.read_text())["title"] for p in DASHBOARD_SPECS}
    assert titles == {"marfleet / Executive", "marfleet / On-call", "marfleet / Debug"}


@pytest.mark.parametrize("spec", DASHBOARD_SPECS, ids=lambda p: p.stem)
def test_dashboard_panels_name_only_promised_metrics_or_recorded_series(spec: Path) -> None:
    documented = contract.documented_samples()
    board = yaml.safe_load(spec.read_text())
    unknown = {
        f"{panel['title']}: {name}"
        for panel in board["panels"]
        for target in panel["targets"]
        for name in promql.metric_names(target["expr"])
        if name not in documented and not name.startswith("marfleet:")
    }
    assert not unknown, f"not in docs/metrics.md: {sorted(unknown)}"


@pytest.mark.parametrize("spec", DASHBOARD_SPECS, ids=lambda p: p.stem)
def test_dashboard_panels_are_well_formed(spec: Path) -> None:
    board = yaml.safe_load(spec.read_text())
    assert board["uid"].startswith("marfleet-") and len(board["uid"]) <= 40
    for panel in board["panels"]:
        assert panel["type"] in {"timeseries", "stat", "table", "bargauge"}, panel["title"]
        assert 1 <= len(panel["targets"]) <= 10, panel["title"]
        assert 1 <= panel.get("width", 12) <= 24, panel["title"]


def test_schema_is_json_and_describes_every_default_value() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())

    def undescribed(value: object, node: dict, path: str) -> list[str]:
        node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]] if "$ref" in node else node
        if not isinstance(value, dict) or "properties" not in node:
            return []
        missing = [f"{path}.{k}" for k in value if k not in node["properties"]]
        return missing + [
            m
            for k, v in value.items()
            if k in node["properties"]
            for m in undescribed(v, node["properties"][k], f"{path}.{k}")
        ]

    assert undescribed(values, schema, "") == []
