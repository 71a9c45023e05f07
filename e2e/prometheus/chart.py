"""Render charts/marfleet with the pinned helm and pick out what Prometheus, prometheus-adapter
and Grafana read from it.

Everything downstream (promtool, the live Prometheus checks, the pictures) starts from the
rendered chart, never from the template sources, so what is tested is exactly what installs.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from e2e.localcluster.toolchain import HELM

from .promql import label_values_selector

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "charts" / "marfleet"
MONITORING_ON = {
    "monitoring.serviceMonitors.enabled": "true",
    "monitoring.podMonitors.enabled": "true",
    "monitoring.prometheusRule.enabled": "true",
    "monitoring.prometheusAdapter.enabled": "true",
    "monitoring.grafana.dashboards.enabled": "true",
}


class HelmError(RuntimeError):
    pass


def helm(*args: str, env: Mapping[str, str] | None = None, timeout: float = 300) -> str:
    """Run the pinned helm; raise HelmError carrying its output when it fails."""
    binary = HELM.path("helm")
    if not binary.exists():
        raise HelmError(f"{binary} is missing: run `make setup` (builds helm once into the cache)")
    result = subprocess.run(
        [str(binary), *args], capture_output=True, text=True, env=env, timeout=timeout
    )
    if result.returncode != 0:
        raise HelmError(f"helm {' '.join(args)} failed:\n{result.stdout}{result.stderr}".strip())
    return result.stdout


def template(
    values_files: Iterable[Path] = (),
    set_values: Mapping[str, str] | None = None,
    release: str = "marfleet",
    namespace: str = "marfleet-system",
    api_versions: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """`helm template` the chart and return its objects, parsed; `api_versions` are the
    group/version/Kind the cluster would serve (the chart renders some objects only then)."""
    args = ["template", release, str(CHART_DIR), "--namespace", namespace]
    args += [f"--api-versions={api}" for api in api_versions]
    for path in values_files:
        args += ["-f", str(path)]
    for key, value in (set_values or {}).items():
        args += ["--set", f"{key}={value}"]
    return [doc for doc in yaml.safe_load_all(helm(*args)) if doc]


def objects_of_kind(objects: Sequence[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o.get("kind") == kind]


def rule_groups(objects: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The groups of the chart's PrometheusRule, as a Prometheus rule file holds them."""
    rules = objects_of_kind(objects, "PrometheusRule")
    if len(rules) != 1:
        raise ValueError(f"expected one PrometheusRule in the rendered chart, found {len(rules)}")
    groups: list[dict[str, Any]] = rules[0]["spec"]["groups"]
    return groups


def write_rule_file(objects: Sequence[dict[str, Any]], path: Path) -> Path:
    path.write_text(yaml.safe_dump({"groups": rule_groups(objects)}, sort_keys=False))
    return path


def adapter_rules(objects: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The prometheus-adapter rules from the chart's adapter ConfigMap."""
    for obj in objects_of_kind(objects, "ConfigMap"):
        if "config.yaml" in obj.get("data", {}) and obj["metadata"]["name"].endswith("-adapter"):
            rules: list[dict[str, Any]] = yaml.safe_load(obj["data"]["config.yaml"])["rules"]
            return rules
    raise ValueError("the rendered chart has no prometheus-adapter ConfigMap")


def dashboards(objects: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Grafana dashboards by uid, from the ConfigMaps carrying the sidecar label."""
    found: dict[str, dict[str, Any]] = {}
    for obj in objects_of_kind(objects, "ConfigMap"):
        if obj["metadata"].get("labels", {}).get("grafana_dashboard") != "1":
            continue
        for text in obj["data"].values():
            board = json.loads(text)
            found[board["uid"]] = board
    return found


@dataclass(frozen=True)
class Query:
    """One PromQL expression the chart ships, and where it comes from (for messages)."""

    source: str
    expr: str


def rule_queries(groups: Sequence[dict[str, Any]]) -> list[Query]:
    return [
        Query(f"rule {rule.get('record') or rule.get('alert')}", rule["expr"])
        for group in groups
        for rule in group["rules"]
    ]


def dashboard_queries(boards: Mapping[str, dict[str, Any]]) -> list[Query]:
    return [
        Query(f"{board['title']} / {panel['title']} ({target['refId']})", target["expr"])
        for board in boards.values()
        for panel in board["panels"]
        for target in panel["targets"]
    ]


def dashboard_variable_queries(boards: Mapping[str, dict[str, Any]]) -> list[Query]:
    """The series selectors behind Grafana's label_values(selector, label) variables."""
    queries = []
    for board in boards.values():
        for var in board["templating"]["list"]:
            if var["type"] == "query":
                selector, label = label_values_selector(var["query"]["query"])
                queries.append(
                    Query(f"{board['title']} / variable {var['name']} ({label})", selector)
                )
    return queries
