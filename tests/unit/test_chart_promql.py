"""Reading PromQL and exposition text well enough to check names against the metric contract."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e.prometheus import contract, promql


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("marfleet_queue_depth", {"marfleet_queue_depth"}),
        (
            'sum by (namespace, isvc) (rate(marfleet_requests_total{code=~"5..", le="0.5"}[5m]))',
            {"marfleet_requests_total"},
        ),
        (
            "histogram_quantile(0.99, sum by (le) (rate(a_bucket{x='by (b)'}[$__rate_interval])))",
            {"a_bucket"},
        ),
        (
            "x:ratio_rate1h > on (namespace, isvc) (14.4 * (1 - y:objective))\nand z offset 10m",
            {"x:ratio_rate1h", "y:objective", "z"},
        ),
        ('label_replace(vector(0.99), "isvc", "a", "", "") or 1e-3', set()),
        ("sum(a) / ignoring (pod) group_left (model) sum by (pod) (b) unless c", {"a", "b", "c"}),
        ("count(up == bool 1) without (instance)", {"up"}),
    ],
)
def test_metric_names_are_the_selected_series(expr: str, names: set[str]) -> None:
    assert promql.metric_names(expr) == names


def test_grafana_variables_become_match_all() -> None:
    expr = 'rate(m{namespace=~"$namespace", isvc=~"${isvc}"}[$__rate_interval])'
    assert promql.grafana_to_promql(expr) == 'rate(m{namespace=~".*", isvc=~".*"}[1m])'
    assert promql.grafana_to_promql(expr, "2m", {"isvc": "cart"}).endswith('"cart"}[2m])')


def test_label_values_queries_split_into_selector_and_label() -> None:
    query = 'label_values(m{namespace=~"$namespace"}, isvc)'
    assert promql.label_values_selector(query) == ('m{namespace=~"$namespace"}', "isvc")
    with pytest.raises(ValueError, match="label_values"):
        promql.label_values_selector("label_values(isvc)")


def test_adapter_templates_expand_like_the_adapter() -> None:
    query = "sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)"
    assert promql.adapter_to_promql(query, "m_total", "shop", ["a-0", "a-1"]) == (
        'sum(rate(m_total{namespace="shop",pod=~"a-0|a-1"}[1m])) by (namespace,pod)'
    )


def test_exposition_names_include_declared_families_without_samples() -> None:
    text = (
        "# HELP marfleet_requests_total answered\n"
        "# TYPE marfleet_requests_total counter\n"
        'marfleet_requests_total{code="200"} 3.0\n'
        "# TYPE marfleet_queue_duration_seconds histogram\n"
        "# TYPE Requests2XX counter\n"
        'Requests2XX{Level="Host"} 1.0\n'
    )
    assert contract.exposed_samples(text) == {
        "marfleet_requests_total",
        "marfleet_queue_duration_seconds_bucket",
        "marfleet_queue_duration_seconds_sum",
        "marfleet_queue_duration_seconds_count",
        "Requests2XX",
    }


def test_documented_names_come_from_the_metrics_tables(tmp_path: Path) -> None:
    doc = tmp_path / "metrics.md"
    doc.write_text(
        "| name | type | meaning |\n|---|---|---|\n"
        "| `a_total` | counter | x |\n"
        "| `B2XX`, `B5XX` | counter | y |\n"
        "| `c_seconds` | histogram | | z |\n"
        "| `spec.autoscaling.metric` | HPA metric | adapter expression |\n"
        "| `rps` | `a_per_second` | `sum(rate(a_total[1m])) by (namespace, pod)` |\n"
    )
    assert contract.documented_samples(doc) == {
        "a_total",
        "B2XX",
        "B5XX",
        "c_seconds_bucket",
        "c_seconds_sum",
        "c_seconds_count",
    }
    assert contract.documented_adapter_queries(doc) == {
        "a_per_second": "sum(rate(a_total[1m])) by (namespace, pod)"
    }


def test_the_real_contract_documents_the_autoscaling_metrics() -> None:
    queries = contract.documented_adapter_queries()
    assert set(queries) == {"marfleet_requests_per_second", "marfleet_inflight_requests"}
    assert "marfleet_requests_total" in contract.documented_samples()
