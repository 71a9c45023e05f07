"""TorchServe's system metrics (CPUUtilization, Memory*, Disk*), read from /proc and statvfs.

TorchServe samples them with psutil in a separate process once a minute; marfleet reads the
same numbers when Prometheus scrapes, with no dependency and no extra process: memory from
/proc/meminfo (used = total - available, the share psutil's percent measures), the disk holding the
working directory from statvfs, CPU busy time from /proc/stat since the previous scrape (since
boot on the first). Units are TorchServe's: percent, megabytes, gigabytes.

GPU metrics (GPUUtilization, GPUMemoryUsed, GPUMemoryUtilization per device, as TorchServe's
nvgpu-based sampler reports them) come from one `nvidia-smi` query per scrape, on a thread,
only on a server that sees GPUs: the frontend never loads CUDA.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger("marfleet.metrics")

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


GPU_QUERY = [
    "nvidia-smi",
    "--query-gpu=index,utilization.gpu,memory.used,memory.total",
    "--format=csv,noheader,nounits",
]
GPU_QUERY_TIMEOUT_S = 5.0


def _run_nvidia_smi(command: Sequence[str]) -> str:
    done = subprocess.run(
        command, check=True, capture_output=True, text=True, timeout=GPU_QUERY_TIMEOUT_S
    )
    return done.stdout


class GpuSampler:
    """TorchServe's GPU metrics per device index, from nvidia-smi (blocking: call it on a
    thread). A failed or timed-out query gives no samples and is logged."""

    def __init__(self, run: Callable[[Sequence[str]], str] = _run_nvidia_smi) -> None:
        self._run = run

    def sample(self) -> dict[str, dict[str, float]]:
        try:
            output = self._run(GPU_QUERY)
        except (OSError, subprocess.SubprocessError) as error:
            log.warning("GPU metrics not read: nvidia-smi failed", extra={"reason": str(error)})
            return {}
        devices: dict[str, dict[str, float]] = {}
        for line in output.splitlines():
            fields = [field.strip() for field in line.split(",")]
            if len(fields) != 4 or not fields[0].isdigit():
                continue
            index, utilization, used, total = fields
            values: dict[str, float] = {}
            for name, text in (("GPUUtilization", utilization), ("GPUMemoryUsed", used)):
                number = _number(text)
                if number is not None:
                    values[name] = number
            used_mb, total_mb = _number(used), _number(total)
            if used_mb is not None and total_mb:
                values["GPUMemoryUtilization"] = round(100.0 * used_mb / total_mb, 1)
            devices[index] = values
        return devices


def _number(text: str) -> float | None:
    """nvidia-smi's number, or None for its `[N/A]`, `[Not Supported]`."""
    try:
        return float(text)
    except ValueError:
        return None
