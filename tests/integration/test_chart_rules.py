"""The chart's PrometheusRule through Prometheus's own tools: `promtool check rules` accepts it
and `promtool test rules` runs charts/marfleet/tests/rules_test.yaml, which must hold, for every
alert, a case where it fires and a case where it stays silent."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.prometheus import chart

RULE_TESTS = chart.CHART_DIR / "tests" / "rules_test.yaml"
RULE_VALUES = chart.CHART_DIR / "tests" / "rules-values.yaml"


def promtool(*args: str, cwd: Path) -> str:
    binary = shutil.which("promtool")
    if binary is None:
        raise RuntimeError("promtool not found: run `make setup` (installs Debian's prometheus)")
    result = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def rule_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("rules")
    chart.write_rule_file(chart.template([RULE_VALUES]), directory / "rules.yaml")
    shutil.copy(RULE_TESTS, directory / RULE_TESTS.name)
    return directory


def alert_names(rule_file: Path) -> set[str]:
    groups = yaml.safe_load(rule_file.read_text())["groups"]
    return {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}


def test_promtool_accepts_the_rules(rule_dir: Path) -> None:
    out = promtool("check", "rules", "rules.yaml", cwd=rule_dir)
    assert "SUCCESS" in out


def test_promtool_rule_unit_tests_pass(rule_dir: Path) -> None:
    out = promtool("test", "rules", RULE_TESTS.name, cwd=rule_dir)
    assert "SUCCESS" in out


def test_every_alert_is_tested_firing_and_silent(rule_dir: Path) -> None:
    cases: list[dict[str, Any]] = [
        case
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    fires = {c["alertname"] for c in cases if c.get("exp_alerts")}
    silent = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    alerts = alert_names(rule_dir / "rules.yaml")
    assert len(alerts) >= 8
    assert alerts - fires == set(), "alerts never shown to fire"
    assert alerts - silent == set(), "alerts never shown to stay silent"


def test_every_value_file_renders_rules_promtool_accepts(tmp_path: Path) -> None:
    values = chart.CHART_DIR / "ci" / "monitoring-values.yaml"
    chart.write_rule_file(chart.template([values]), tmp_path / "rules.yaml")
    assert "SUCCESS" in promtool("check", "rules", "rules.yaml", cwd=tmp_path)
