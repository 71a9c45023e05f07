"""Docs that follow running code: the runtime API page matches what a real `marfleet serve`
describes, and every alert the rendered chart ships has a runbook in docs/operations.md."""

from __future__ import annotations

import difflib
from pathlib import Path

from e2e.docs import markdown, runtime_api
from e2e.prometheus import chart

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def test_the_runtime_api_page_is_what_the_server_describes() -> None:
    descriptions = runtime_api.fetch_descriptions()
    paths = set(descriptions["inference"]["paths"]) | set(descriptions["management"]["paths"])
    assert {"/predictions/{model_name}", "/v2/models/{model_name}/infer", "/models"} <= paths
    expected = runtime_api.render(descriptions)
    committed = runtime_api.PAGE_PATH.read_text()
    diff = "\n".join(
        difflib.unified_diff(committed.splitlines(), expected.splitlines(), lineterm="", n=1)
    )
    assert committed == expected, f"run `python -m e2e.docs write`:\n{diff[:3000]}"


def test_every_alert_the_chart_ships_has_a_runbook() -> None:
    groups = chart.rule_groups(chart.template(set_values=chart.MONITORING_ON))
    alerts = [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]
    assert len(alerts) >= 8
    runbooks = set(markdown.headings(OPERATIONS.read_text()))
    missing = [alert for alert in alerts if alert not in runbooks]
    assert not missing, f"docs/operations.md has no section for {missing}"
