"""Kubernetes pod discovery for Debian's Prometheus, which is built without it.

Debian's prometheus 2.42 ships only the file, HTTP and DNS service discoveries (its packaging
removed Kubernetes SD for the client library's dependencies), so a `kubernetes_sd_configs`
job does not even parse. This does the pod role's part from outside: it lists the pods on one
node every second and writes them as a file_sd target file carrying the same
`__meta_kubernetes_*` labels Kubernetes SD would give them. The scrape job's relabel_configs
are then exactly those of a kubernetes_sd pod job (annotations `prometheus.io/scrape`, `/port`,
`/path`; `namespace` and `pod` labels), and only discovery differs from a cluster.
"""

from __future__ import annotations

import json
import re
import ssl
import threading
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from e2e.support import Started

META = "__meta_kubernetes_"
ANNOTATION = f"{META}pod_annotation_prometheus_io_"
# what the job labels with, as the chart's PodMonitor relabelings do in a cluster
POD_LABELS = {
    f"{META}namespace": "namespace",
    f"{META}pod_name": "pod",
    f"{META}pod_label_serving_marfleet_io_inferenceservice": "isvc",
}


def pod_scrape_job(targets_file: Path, job: str = "kubernetes-pods") -> dict[str, Any]:
    """A scrape job for the pods in `targets_file` that ask to be scraped."""
    return {
        "job_name": job,
        "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "5s"}],
        "relabel_configs": [
            {"source_labels": [f"{ANNOTATION}scrape"], "regex": "true", "action": "keep"},
            {
                "source_labels": [f"{ANNOTATION}path"],
                "regex": "(.+)",
                "target_label": "__metrics_path__",
            },
            {
                "source_labels": ["__address__", f"{ANNOTATION}port"],
                "regex": r"([^:]+)(?::\d+)?;(\d+)",
                "replacement": "$1:$2",
                "target_label": "__address__",
            },
            *(
                {"source_labels": [source], "target_label": target}
                for source, target in POD_LABELS.items()
            ),
        ],
    }


def _label_name(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def target_group(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """The file_sd group for one pod, or None while it has no address or has finished."""
    status = pod.get("status", {})
    if not status.get("podIP") or status.get("phase") in ("Succeeded", "Failed"):
        return None
    meta = pod["metadata"]
    labels = {
        f"{META}namespace": meta["namespace"],
        f"{META}pod_name": meta["name"],
        f"{META}pod_ip": status["podIP"],
        f"{META}pod_node_name": pod["spec"].get("nodeName", ""),
        f"{META}pod_phase": status.get("phase", ""),
        **{f"{META}pod_label_{_label_name(k)}": v for k, v in (meta.get("labels") or {}).items()},
        **{
            f"{META}pod_annotation_{_label_name(k)}": v
            for k, v in (meta.get("annotations") or {}).items()
        },
    }
    return {"targets": [status["podIP"]], "labels": labels}


class PodDiscovery(Started):
    """Keeps `path` (a file_sd target file) in step with the pods on `node`."""

    def __init__(
        self,
        server: str,
        ca_file: Path,
        token: str,
        node: str,
        path: Path,
        interval: float = 1.0,
    ) -> None:
        self.url = f"{server}/api/v1/pods?" + urllib.parse.urlencode(
            {"fieldSelector": f"spec.nodeName={node}"}
        )
        self.context = ssl.create_default_context(cafile=str(ca_file))
        self.token = token
        self.path = path
        self.interval = interval
        self.last_error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.refresh()  # the file exists, and a bad credential fails here, before Prometheus
        if self.last_error:
            raise RuntimeError(f"pod discovery: {self.last_error}")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="pod-discovery", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()

    def refresh(self) -> None:
        request = urllib.request.Request(
            self.url, headers={"Authorization": f"Bearer {self.token}"}
        )
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=10) as response:
                pods = json.load(response)["items"]
        except OSError as error:
            self.last_error = str(error)
            return
        self.last_error = ""
        groups = [g for g in map(target_group, pods) if g is not None]
        text = json.dumps(groups, indent=1, sort_keys=True)
        if not self.path.exists() or self.path.read_text() != text:
            partial = self.path.with_name(self.path.name + ".partial")
            partial.write_text(text)
            partial.replace(self.path)  # Prometheus never reads half a file

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.refresh()
