"""Draw the chart's Grafana dashboards from real Prometheus data, with matplotlib.

Each dashboard becomes one PNG laid out by the panels' own gridPos, every panel drawn from its
own queries (range queries for time series, instant queries for stats, bar gauges and tables),
so the pictures in docs/observability.md show exactly what the shipped dashboards show.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from .promql import grafana_to_promql
from .server import LocalPrometheus

BACKGROUND = "#111217"
PANEL = "#181b1f"
TEXT = "#ccccdc"
GRID = "#2c3235"
COLORS = ("#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff", "#ffcb7d")
INCH_PER_COLUMN = 0.75
INCH_PER_ROW = 0.32
RATE_INTERVAL = "30s"


def format_value(unit: str) -> Callable[[float], str]:
    def seconds(v: float) -> str:
        return f"{v * 1000:.0f} ms" if abs(v) < 1 else f"{v:.2f} s"

    formats: dict[str, Callable[[float], str]] = {
        "percentunit": lambda v: f"{v * 100:.1f}%",
        "percent": lambda v: f"{v:.0f}%",
        "s": seconds,
        "reqps": lambda v: f"{v:.1f}/s",
        "ops": lambda v: f"{v:.2f}/s",
    }
    return formats.get(unit, lambda v: f"{v:.3g}")


def clock(minutes: float) -> str:
    seconds = round(minutes * 60)
    return f"{seconds // 60}:{seconds % 60:02d}"


def legend(template: str, labels: Mapping[str, str]) -> str:
    text = template
    for key, value in labels.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def _values(sample: Sequence[Any]) -> float:
    value = float(sample[1])
    return value if math.isfinite(value) else math.nan


class DashboardPainter:
    def __init__(self, prometheus: LocalPrometheus, start: float, end: float, step: float) -> None:
        self.prometheus = prometheus
        self.start = start
        self.end = end
        self.step = step

    def paint(self, board: Mapping[str, Any], path: Path) -> Path:
        panels = board["panels"]
        rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
        header = 1.2
        width, height = 24 * INCH_PER_COLUMN, rows * INCH_PER_ROW + header
        figure = Figure(figsize=(width, height), facecolor=BACKGROUND)
        figure.text(0.01, 1 - 0.45 / height, board["title"], color=TEXT, fontsize=16, va="top")
        figure.text(
            0.01, 1 - 0.85 / height, board["description"], color="#8e8e8e", fontsize=10, va="top"
        )
        for panel in panels:
            grid = panel["gridPos"]
            pad_x, pad_y = 0.035, 0.55 / height
            left = grid["x"] / 24 + pad_x * grid["w"] / 24 + 0.01
            bottom = 1 - (header + (grid["y"] + grid["h"]) * INCH_PER_ROW) / height + pad_y
            axes_width = grid["w"] / 24 * (1 - pad_x) - 0.02
            axes_height = grid["h"] * INCH_PER_ROW / height - 1.6 * pad_y
            axes = figure.add_axes((left, bottom, axes_width, axes_height), facecolor=PANEL)
            self._panel(axes, panel)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=80, facecolor=BACKGROUND)
        return path

    def _panel(self, axes: Axes, panel: Mapping[str, Any]) -> None:
        axes.set_title(panel["title"], color=TEXT, fontsize=11, loc="left")
        for spine in axes.spines.values():
            spine.set_color(GRID)
        axes.tick_params(colors=TEXT, labelsize=8)
        draw = {
            "timeseries": self._timeseries,
            "stat": self._stat,
            "bargauge": self._bargauge,
            "table": self._table,
        }[panel["type"]]
        draw(axes, panel, format_value(panel["fieldConfig"]["defaults"]["unit"]))

    def _instant(self, expr: str) -> list[dict[str, Any]]:
        return self.prometheus.query(grafana_to_promql(expr, RATE_INTERVAL), self.end)

    def _timeseries(
        self, axes: Axes, panel: Mapping[str, Any], fmt: Callable[[float], str]
    ) -> None:
        color = iter(COLORS * 4)
        for target in panel["targets"]:
            expr = grafana_to_promql(target["expr"], RATE_INTERVAL)
            for series in self.prometheus.query_range(expr, self.start, self.end, self.step):
                times = [(float(t) - self.start) / 60 for t, _ in series["values"]]
                values = [_values(s) for s in series["values"]]
                label = legend(target.get("legendFormat", ""), series["metric"])
                axes.plot(times, values, color=next(color), linewidth=1.4, label=label)
        axes.grid(color=GRID, linewidth=0.6)
        axes.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt(v)))
        axes.xaxis.set_major_formatter(FuncFormatter(lambda v, _: clock(v)))
        axes.set_xlabel("minutes:seconds into the run", color="#8e8e8e", fontsize=8)
        defaults = panel["fieldConfig"]["defaults"]
        if "max" in defaults:
            axes.set_ylim(top=defaults["max"])
        if axes.lines:
            axes.legend(fontsize=7, facecolor=PANEL, edgecolor=GRID, labelcolor=TEXT, loc="best")
        else:
            axes.text(0.5, 0.5, "No data", color=TEXT, ha="center", transform=axes.transAxes)

    def _stat(self, axes: Axes, panel: Mapping[str, Any], fmt: Callable[[float], str]) -> None:
        axes.set_xticks([])
        axes.set_yticks([])
        result = self._instant(panel["targets"][0]["expr"])
        text = fmt(_values(result[0]["value"])) if result else "No data"
        axes.text(
            0.5, 0.45, text, color=COLORS[0], fontsize=30, ha="center", transform=axes.transAxes
        )

    def _bargauge(self, axes: Axes, panel: Mapping[str, Any], fmt: Callable[[float], str]) -> None:
        target = panel["targets"][0]
        result = self._instant(target["expr"])
        names = [legend(target.get("legendFormat", ""), r["metric"]) for r in result]
        values = [_values(r["value"]) for r in result]
        axes.barh(names, values, color=COLORS[0])
        defaults = panel["fieldConfig"]["defaults"]
        axes.set_xlim(defaults.get("min", 0), defaults.get("max", max(values, default=1)))
        for y, value in enumerate(values):
            axes.text(value, y, f" {fmt(value)}", color=TEXT, va="center", fontsize=10)
        axes.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt(v)))

    def _table(self, axes: Axes, panel: Mapping[str, Any], fmt: Callable[[float], str]) -> None:
        axes.axis("off")
        result = self._instant(panel["targets"][0]["expr"])
        columns = sorted({k for r in result for k in r["metric"]})
        rows = [
            [r["metric"].get(c, "") for c in columns] + [fmt(_values(r["value"]))] for r in result
        ]
        if not rows:
            axes.text(0.5, 0.5, "No data", color=TEXT, ha="center", transform=axes.transAxes)
            return
        table = axes.table(cellText=rows, colLabels=[*columns, "pods"], loc="upper center")
        for cell in table.get_celld().values():
            cell.set_facecolor(PANEL)
            cell.set_edgecolor(GRID)
            cell.get_text().set_color(TEXT)
