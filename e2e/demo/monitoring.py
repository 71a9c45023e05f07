"""The demo's Prometheus: Debian's binary on a free loopback port, scraping the local stand-ins
with the labels the chart's PodMonitors would give their pods, and loaded with the chart's
recording and alerting rules, so the dashboards' queries and the alerts work against it.

The configuration comes from `LocalPrometheus.config()` (the same one the observability tests
use); the process itself is started through the demo's `ProcessBook`, so `down` can end it
from another process like everything else.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import httpx
import yaml

from e2e.prometheus import chart
from e2e.prometheus.server import LocalPrometheus, Target

from .console import DemoError
from .processes import Entry, ProcessBook


def start(
    book: ProcessBook, targets: Sequence[Target], workdir: Path, log: Path, port: int
) -> Entry:
    """Start Prometheus on `port` (chosen before the chart is installed, which names it as
    the rollouts' metrics source); returns its process (not yet ready)."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise DemoError("prometheus is not installed: run `make setup` (Debian's prometheus)")
    workdir.mkdir(parents=True, exist_ok=True)
    rules = chart.write_rule_file(
        chart.template(set_values=chart.MONITORING_ON), workdir / "marfleet-rules.yaml"
    )
    settings = LocalPrometheus(workdir, targets, rule_files=[rules], interval="2s")
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump(settings.config(), sort_keys=False))
    entry = book.start(
        "prometheus",
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1d",
            "--log.format=json",
        ],
        env={"PATH": "/usr/bin:/bin"},
        log=log,
        cwd=workdir,
    )
    return entry


def targets_up(url: str) -> tuple[int, int]:
    """(targets scraped successfully, targets configured)."""
    active = httpx.get(f"{url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
    return sum(1 for t in active if t["health"] == "up"), len(active)


def query(url: str, expr: str) -> dict[str, float]:
    """An instant query whose result has one series per `variant`: variant -> value."""
    reply = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=5).json()
    if reply.get("status") != "success":
        raise DemoError(f"Prometheus refused {expr!r}: {reply.get('error')}")
    return {r["metric"].get("variant", ""): float(r["value"][1]) for r in reply["data"]["result"]}
