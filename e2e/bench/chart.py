"""The benchmark's results JSON (`e2e.bench.run --out`) drawn as a PNG: one panel per scenario,
requests per second per server, p99 latency written on each bar; a server that did not start or
whose every round failed gets an empty slot labelled so.

    .venv/bin/python -m e2e.bench.chart bench-results/peers.json bench-results/peers.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use(): the backend has to be chosen first


def draw(results: dict[str, Any], out: Path) -> None:
    scenarios: list[str] = results["scenarios"]
    names: list[str] = results["servers"]
    figure, axes = plt.subplots(1, len(scenarios), figsize=(4 * len(scenarios), 4), squeeze=False)
    for axis, scenario in zip(axes[0], scenarios, strict=True):
        heights, labels = [], []
        for name in names:
            row = results["served"].get(name, {}).get(scenario)
            if row is None or "rps" not in row:
                heights.append(0.0)
                labels.append("did not start" if name in results["failed_to_start"] else "failed")
            else:
                heights.append(float(row["rps"]))
                labels.append(f"p99 {row['p99_ms']:.0f} ms")
        bars = axis.bar(names, heights, color=["C0" if n == "marfleet" else "C7" for n in names])
        for bar, label in zip(bars, labels, strict=True):
            axis.annotate(
                label,
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
        axis.set_title(scenario)
        axis.set_ylabel("requests / s")
        axis.tick_params(axis="x", labelrotation=45, labelsize=8)
    figure.suptitle(results.get("command", ""), fontsize=8)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)


def main(argv: list[str]) -> int:
    source, out = Path(argv[0]), Path(argv[1])
    draw(json.loads(source.read_text()), out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
