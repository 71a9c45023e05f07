"""`python -m e2e.prometheus pictures [--out docs/images] [--minutes 6]`

Runs the observability fleet (runtimes, router, operator on a local control plane) through a
calm phase, a bad canary and a recovery, with Prometheus scraping it and the chart's rules
loaded, then draws every dashboard into --out.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from e2e.localcluster import LocalCluster

from . import chart
from .pictures import DashboardPainter
from .reconciler import ReconcilingOperator
from .server import LocalPrometheus
from .workload import Fleet, Traffic

PHASES = (
    Traffic(fail_ratio={"stable": 0.005, "canary": 0.01}, fault_every_seconds=30),
    Traffic(fail_ratio={"stable": 0.005, "canary": 0.25}, slow_ratio=0.15, fault_every_seconds=8),
    Traffic(fail_ratio={"stable": 0.005, "canary": 0.01}, slow_ratio=0.03, fault_every_seconds=0),
)


def pictures(out: Path, minutes: float) -> list[Path]:
    objects = chart.template(set_values=chart.MONITORING_ON)
    cluster = LocalCluster("pictures")
    with tempfile.TemporaryDirectory(prefix="marfleet-pictures-") as tmp:
        workdir = Path(tmp)
        rules = chart.write_rule_file(objects, workdir / "rules.yaml")
        fleet = Fleet(workdir / "fleet")
        operator = ReconcilingOperator(cluster, workdir / "operator", "pictures")
        prometheus = LocalPrometheus(
            workdir / "prometheus", [*fleet.targets(), operator.target()], [rules], interval="2s"
        )
        cluster.up()
        try:
            with fleet, operator, prometheus:
                prometheus.wait_for_targets()
                start = time.time()
                fleet.fail_one_load(fleet.pods[0])
                for phase in PHASES:
                    fleet.drive(minutes * 60 / len(PHASES), phase)
                time.sleep(4)
                painter = DashboardPainter(prometheus, start, time.time(), step=5)
                return [
                    painter.paint(board, out / f"{uid}.png")
                    for uid, board in chart.dashboards(objects).items()
                ]
        finally:
            cluster.down()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.prometheus")
    parser.add_argument("action", choices=["pictures"])
    parser.add_argument("--out", type=Path, default=chart.REPO_ROOT / "docs" / "images")
    parser.add_argument("--minutes", type=float, default=6)
    args = parser.parse_args(argv)
    for path in pictures(args.out, args.minutes):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
