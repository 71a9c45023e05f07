"""A real Prometheus scrapes real marfleet processes (two `marfleet serve` variants under mixed,
faulty load, the `marfleet router` in front of them, and `marfleet operator` reconciling on the
local control plane), with the chart's rules loaded: every dashboard query, dashboard variable,
recording rule and adapter rule returns data, alerts see the faults, and nothing the chart
ships names a metric the running components do not export."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from marfleet.operator import render

from e2e.localcluster import LocalCluster
from e2e.prometheus import chart, contract, promql
from e2e.prometheus.pictures import DashboardPainter
from e2e.prometheus.reconciler import ReconcilingOperator
from e2e.prometheus.server import LocalPrometheus
from e2e.prometheus.workload import NAMESPACE, Fleet

pytestmark = pytest.mark.slow

LOAD_SECONDS = 40
RATE_INTERVAL = "30s"
SYNTHESIZED = {"up"}
"""Series Prometheus makes itself for every target."""


@dataclass(frozen=True)
class Observation:
    objects: list[dict[str, Any]]
    prometheus: LocalPrometheus
    fleet: Fleet
    at: float
    """A moment while the load ran: every query is evaluated there."""
    statuses: dict[int, int]
    expositions: dict[str, str]


@pytest.fixture(scope="module")
def observed(
    cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Observation]:
    workdir = tmp_path_factory.mktemp("observability")
    objects = chart.template(set_values=chart.MONITORING_ON)
    rules = chart.write_rule_file(objects, workdir / "rules.yaml")
    fleet = Fleet(workdir / "fleet")
    operator = ReconcilingOperator(cluster, workdir / "operator", "observability")
    prometheus = LocalPrometheus(
        workdir / "prometheus", [*fleet.targets(), operator.target()], [rules]
    )
    with fleet, operator, prometheus:
        prometheus.wait_for_targets()
        fleet.fail_one_load(fleet.pods[0])
        statuses = fleet.drive(LOAD_SECONDS)
        at = time.time() - 1
        expositions = {**fleet.expositions(), "operator": operator.metrics_text()}
        time.sleep(3)  # the last scrape and rule evaluation of the load
        yield Observation(objects, prometheus, fleet, at, statuses, expositions)


def recorded_names(objects: list[dict[str, Any]]) -> set[str]:
    groups = chart.rule_groups(objects)
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}


def all_queries(objects: list[dict[str, Any]]) -> list[chart.Query]:
    boards = chart.dashboards(objects)
    adapter = [
        chart.Query(f"adapter {rule['name']['as']}", rule["seriesQuery"])
        for rule in chart.adapter_rules(objects)
    ]
    return (
        chart.rule_queries(chart.rule_groups(objects))
        + chart.dashboard_queries(boards)
        + chart.dashboard_variable_queries(boards)
        + adapter
    )


def test_the_load_produced_successes_errors_and_refusals(observed: Observation) -> None:
    assert observed.statuses.get(200, 0) > 50, observed.statuses
    assert observed.statuses.get(500, 0) > 0, observed.statuses
    assert observed.statuses.get(503, 0) > 0, observed.statuses


def test_the_chart_names_only_metrics_the_components_export(observed: Observation) -> None:
    exported = set().union(*(contract.exposed_samples(t) for t in observed.expositions.values()))
    recorded = recorded_names(observed.objects)
    missing = sorted(
        f"{query.source}: {name}"
        for query in all_queries(observed.objects)
        for name in promql.metric_names(query.expr)
        if name not in exported | recorded | SYNTHESIZED
    )
    assert not missing, f"named by the chart, exported by no running component: {missing}"


def test_every_dashboard_query_returns_data(observed: Observation) -> None:
    empty = [
        query.source
        for query in chart.dashboard_queries(chart.dashboards(observed.objects))
        if not observed.prometheus.query(
            promql.grafana_to_promql(query.expr, RATE_INTERVAL), observed.at
        )
    ]
    assert not empty, f"dashboard panels without data: {empty}"


def test_every_dashboard_variable_lists_values(observed: Observation) -> None:
    for query in chart.dashboard_variable_queries(chart.dashboards(observed.objects)):
        label = query.source.rsplit("(", 1)[1].rstrip(")")
        series = observed.prometheus.query(promql.grafana_to_promql(query.expr), observed.at)
        assert {s["metric"].get(label) for s in series} - {None, ""}, query.source


def test_every_rule_evaluates_and_every_recording_rule_returns_data(
    observed: Observation,
) -> None:
    rules = observed.prometheus.rule_health()
    assert {r["name"] for r in rules} >= recorded_names(observed.objects)
    unhealthy = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not unhealthy
    empty = sorted(
        name for name in recorded_names(observed.objects) if not observed.prometheus.query(name)
    )
    assert not empty, f"recording rules without data: {empty}"


def test_every_series_an_alert_reads_exists(observed: Observation) -> None:
    alerts = [
        q for q in chart.rule_queries(chart.rule_groups(observed.objects)) if "alert" in q.source
    ]
    absent = sorted(
        f"{query.source}: {name}"
        for query in alerts
        for name in promql.metric_names(query.expr)
        if not observed.prometheus.query(f"count({name})", observed.at)
    )
    assert not absent, f"alerts reading series that do not exist: {absent}"


def test_the_faults_put_the_matching_alerts_on(observed: Observation) -> None:
    active = {
        (alert["labels"]["alertname"], alert["labels"].get("isvc"))
        for alert in observed.prometheus.api("alerts")["alerts"]
    }
    assert ("MarfleetAvailabilityBudgetBurnFast", "cart") in active, active
    assert ("MarfleetModelLoadFailing", "cart") in active, active
    assert ("MarfleetQueueFull", "cart") in active, active


def test_the_adapter_serves_the_operators_hpa_metrics_per_pod(observed: Observation) -> None:
    pods = [pod.name for pod in observed.fleet.pods]
    served = {}
    for rule in chart.adapter_rules(observed.objects):
        series = promql.metric_names(rule["seriesQuery"]).pop()
        query = promql.adapter_to_promql(rule["metricsQuery"], series, NAMESPACE, pods)
        result = observed.prometheus.query(query, observed.at)
        served[rule["name"]["as"]] = {s["metric"]["pod"] for s in result}
    assert set(served) == set(render.HPA_METRICS.values())
    assert all(found == set(pods) for found in served.values()), served


def test_the_operators_keda_queries_return_data(observed: Observation) -> None:
    selector = f'namespace="{NAMESPACE}",pod=~"cart-stable-.*"'
    for metric, template in render.KEDA_QUERIES.items():
        query = template.format(selector=selector)
        assert observed.prometheus.query(query, observed.at), f"{metric}: {query}"


def test_every_dashboard_can_be_drawn(observed: Observation, tmp_path: Path) -> None:
    painter = DashboardPainter(observed.prometheus, observed.at - LOAD_SECONDS, observed.at, 5)
    for uid, board in chart.dashboards(observed.objects).items():
        picture = painter.paint(board, tmp_path / f"{uid}.png")
        assert picture.read_bytes().startswith(b"\x89PNG"), uid
