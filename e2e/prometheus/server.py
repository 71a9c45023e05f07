"""A real Prometheus (Debian's) on loopback, configured for the processes a test starts.

The configuration is generated: one static scrape job per target with the labels a
PodMonitor's relabelings would give a pod in Kubernetes (namespace, pod, isvc), so the chart's
rules and dashboards see the same label set they see in a cluster; jobs that discover their
targets themselves (kubernetes_sd_configs against a local cluster) are passed as they are.
Port, data directory and process belong to the instance and are removed by `stop()`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from e2e.support import Started, free_port, terminate


@dataclass(frozen=True)
class Target:
    """One scrape target: `address` is host:port of a /metrics endpoint."""

    job: str
    address: str
    labels: Mapping[str, str] = field(default_factory=dict)
    honor_labels: bool = False


class PrometheusError(RuntimeError):
    pass


class LocalPrometheus(Started):
    def __init__(
        self,
        workdir: Path,
        targets: Sequence[Target],
        rule_files: Sequence[Path] = (),
        interval: str = "1s",
        scrape_configs: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        """scrape_configs: whole scrape jobs, written after the static targets' jobs."""
        self.workdir = workdir
        self.targets = tuple(targets)
        self.scrape_configs = tuple(scrape_configs)
        self.rule_files = tuple(rule_files)
        self.interval = interval
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        jobs: dict[str, list[Target]] = {}
        for target in self.targets:
            jobs.setdefault(target.job, []).append(target)
        return {
            "global": {"scrape_interval": self.interval, "evaluation_interval": self.interval},
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [
                {
                    "job_name": job,
                    "honor_labels": any(t.honor_labels for t in group),
                    "static_configs": [
                        {"targets": [t.address], "labels": dict(t.labels)} for t in group
                    ],
                }
                for job, group in jobs.items()
            ]
            + [dict(job) for job in self.scrape_configs],
        }

    def start(self, timeout: float = 30) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise PrometheusError("prometheus not found: run `make setup` (Debian's prometheus)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        self.port = free_port()
        log = (self.workdir / "prometheus.log").open("wb")
        self._process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1d",
                "--log.format=json",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise PrometheusError(f"prometheus exited: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.2)
        self.stop()
        raise PrometheusError(f"prometheus not ready after {timeout}s: {self.log_tail()}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            terminate(process, grace=15)

    def log_tail(self, lines: int = 20) -> str:
        path = self.workdir / "prometheus.log"
        return "\n".join(path.read_text().splitlines()[-lines:]) if path.exists() else ""

    # ----- HTTP API -----
    def api(self, path: str, **params: str | float) -> Any:
        query = urllib.parse.urlencode({k: str(v) for k, v in params.items()})
        try:
            with urllib.request.urlopen(
                f"{self.url}/api/v1/{path}?{query}", timeout=30
            ) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:
            body = json.load(error)
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, str | float] = {"query": expr}
        if at is not None:
            params["time"] = at
        data = self.api("query", **params)
        result: list[dict[str, Any]] = data["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        data = self.api("query_range", query=expr, start=start, end=end, step=step)
        result: list[dict[str, Any]] = data["result"]
        return result

    def wait_for_targets(self, timeout: float = 30) -> None:
        """Return once every static target has been scraped successfully."""
        jobs = {t.job for t in self.targets}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            active = [t for t in self.api("targets")["activeTargets"] if t["scrapePool"] in jobs]
            if len(active) == len(self.targets) and all(t["health"] == "up" for t in active):
                return
            time.sleep(0.5)
        raise PrometheusError(f"targets not all up after {timeout}s: {active}")

    def rule_health(self) -> list[dict[str, Any]]:
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]
