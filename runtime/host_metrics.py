"""TorchServe's system metrics (CPUUtilization, Memory*, Disk*), read from /proc and statvfs.

TorchServe samples them with psutil in a separate process once a minute; marfleet reads the
same numbers when Prometheus scrapes, with no dependency and no extra process: memory from
/proc/meminfo (used = total - available, the share psutil's percent measures), the disk holding the
working directory from statvfs, CPU busy time from /proc/stat since the previous scrape (since
boot on the first). Units are TorchServe's: percent, megabytes, gigabytes. GPU metrics are not
read here (the frontend does not load CUDA); see docs/metrics.md.
"""

from __future__ import annotations

import os
from pathlib import Path

MB = 1024 * 1024
GB = 1024 * MB


class HostSampler:
    def __init__(self, disk_path: Path, proc: Path = Path("/proc")) -> None:
        self._disk_path = disk_path
        self._proc = proc
        self._last_cpu: tuple[int, int] | None = None

    def sample(self) -> dict[str, float]:
        """TorchServe metric name -> value, for whatever this host lets us read."""
        values: dict[str, float] = {}
        cpu = self._cpu_utilization()
        if cpu is not None:
            values["CPUUtilization"] = cpu
        values.update(self._memory())
        values.update(self._disk())
        return values

    def _cpu_utilization(self) -> float | None:
        try:
            fields = (self._proc / "stat").read_text().split("\n", 1)[0].split()[1:]
        except OSError:
            return None
        ticks = [int(field) for field in fields]
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
        total = sum(ticks[:8])  # guest time is already counted in user
        previous, self._last_cpu = self._last_cpu, (total, idle)
        if previous is not None:
            total, idle = total - previous[0], idle - previous[1]
        return round(100.0 * (total - idle) / total, 1) if total > 0 else 0.0

    def _memory(self) -> dict[str, float]:
        try:
            lines = (self._proc / "meminfo").read_text().splitlines()
        except OSError:
            return {}
        kib = {}
        for line in lines:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                kib[key] = int(parts[0]) * 1024
        total, available = kib.get("MemTotal"), kib.get("MemAvailable")
        if not total or available is None:
            return {}
        used = total - available
        return {
            "MemoryUsed": used / MB,
            "MemoryAvailable": available / MB,
            "MemoryUtilization": round(100.0 * used / total, 1),
        }

    def _disk(self) -> dict[str, float]:
        try:
            stat = os.statvfs(self._disk_path)
        except OSError:
            return {}
        total = stat.f_blocks * stat.f_frsize
        free = stat.f_bavail * stat.f_frsize
        used = (stat.f_blocks - stat.f_bfree) * stat.f_frsize
        if total == 0:
            return {}
        return {
            "DiskUsage": used / GB,
            "DiskAvailable": free / GB,
            "DiskUtilization": round(100.0 * used / (used + free), 1),
        }
