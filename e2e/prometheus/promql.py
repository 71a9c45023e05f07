"""Just enough PromQL reading to name the metrics an expression selects, and to turn the
templated queries of Grafana and prometheus-adapter into plain PromQL.

A full parser is not needed: once string literals, label matchers, durations and grouping
clauses are removed, every remaining identifier that is not a keyword, a function call or a
number is a metric name. Tests feed these names to the check against what components export.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_CLAUSE = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_OFFSET = re.compile(r"\boffset\s+-?[0-9a-z]+", re.IGNORECASE)
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "bool",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "inf",
        "nan",
        "e",
    }
)
_LABEL_VALUES = re.compile(r"^\s*label_values\((?:(.*),\s*)?([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$")


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (recording-rule names included)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    while True:
        stripped = _CLAUSE.sub(" ", text)
        if stripped == text:
            break
        text = stripped
    names = set()
    for match in _IDENT.finditer(text):
        rest = text[match.end() :].lstrip()
        word = match.group(0)
        if rest.startswith("(") or word.lower() in _KEYWORDS:
            continue
        if match.start() > 0 and (
            text[match.start() - 1].isdigit() or text[match.start() - 1] == "."
        ):
            continue
        names.add(word)
    return names


def grafana_to_promql(
    expr: str, rate_interval: str = "1m", variables: Mapping[str, str] | None = None
) -> str:
    """Substitute Grafana's variables the way a dashboard showing "All" does."""
    values = {"__rate_interval": rate_interval, "__interval": "30s", "__range": "1h"}
    values.update(variables or {})
    text = re.sub(
        r"\$(\w+)|\$\{(\w+)\}",
        lambda m: values.get(m.group(1) or m.group(2), ".*"),
        expr,
    )
    return text


def label_values_selector(query: str) -> tuple[str, str]:
    """Split a Grafana `label_values(selector, label)` query into its selector and label."""
    match = _LABEL_VALUES.match(query)
    if not match or not match.group(1):
        raise ValueError(f"not a label_values(selector, label) query: {query!r}")
    return match.group(1), match.group(2)


def adapter_to_promql(metrics_query: str, series: str, namespace: str, pods: list[str]) -> str:
    """Expand a prometheus-adapter metricsQuery as the adapter does for one namespace's pods."""
    matchers = f'namespace="{namespace}",pod=~"{"|".join(pods)}"'
    return (
        metrics_query.replace("<<.Series>>", series)
        .replace("<<.LabelMatchers>>", matchers)
        .replace("<<.GroupBy>>", "namespace,pod")
    )
