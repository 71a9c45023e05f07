"""The small formatting rules of the dashboard pictures, the same ones Grafana applies."""

from __future__ import annotations

import pytest

from e2e.prometheus.pictures import clock, format_value, legend


@pytest.mark.parametrize(
    ("unit", "value", "text"),
    [
        ("percentunit", 0.9925, "99.2%"),
        ("percent", 90, "90%"),
        ("s", 0.25, "250 ms"),
        ("s", 2.5, "2.50 s"),
        ("reqps", 29.61, "29.6/s"),
        ("none", 1234.5, "1.23e+03"),
    ],
)
def test_values_are_formatted_by_unit(unit: str, value: float, text: str) -> None:
    assert format_value(unit)(value) == text


def test_legends_fill_in_labels_and_keep_unknown_ones() -> None:
    labels = {"namespace": "shop", "isvc": "cart"}
    assert legend("{{namespace}}/{{isvc}} {{variant}}", labels) == "shop/cart {{variant}}"


def test_clock_rounds_to_whole_seconds() -> None:
    assert [clock(m) for m in (0, 0.5, 1.999, 2.25)] == ["0:00", "0:30", "2:00", "2:15"]
