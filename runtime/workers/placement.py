"""Which device each worker gets: TorchServe's round robin over the visible GPUs.

Pure functions plus one probe, so GPU placement is tested on machines without GPUs.
`gpu_id` is an index among the *visible* devices (what `torch.device(f"cuda:{gpu_id}")` means
inside a process that inherits `CUDA_VISIBLE_DEVICES`), never a physical index.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence


def visible_gpu_count(
    env: Mapping[str, str], installed: int, number_of_gpu: int | None = None
) -> int:
    """GPUs a worker may use: installed ones, narrowed by CUDA_VISIBLE_DEVICES and number_of_gpu."""
    count = installed
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        entries = []
        for entry in (part.strip() for part in visible.split(",")):
            if not entry or entry.startswith("-"):
                break  # CUDA stops at the first invalid or negative entry
            entries.append(entry)
        count = min(count, len(entries))
    if number_of_gpu is not None:
        count = min(count, max(0, number_of_gpu))
    return count


def installed_gpu_count(run: Callable[[Sequence[str]], str] | None = None) -> int:
    """Count NVIDIA GPUs with nvidia-smi as TorchServe does (0 when it is absent or fails)."""
    if run is None:
        if shutil.which("nvidia-smi") is None:
            return 0
        run = _run
    try:
        output = run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"])
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in output.splitlines() if line.strip().isdigit())


def _run(command: Sequence[str]) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True, timeout=20).stdout


def model_devices(gpu_count: int, device_type: str, device_ids: Sequence[int] | None) -> list[int]:
    """The GPU ids a model may use ([] means CPU); refuses ids that are not visible."""
    if device_type == "cpu" or gpu_count == 0:
        if device_type == "gpu":
            raise ValueError("deviceType is gpu but no GPU is visible to this server")
        return []
    if device_ids is None:
        return list(range(gpu_count))
    invalid = [i for i in device_ids if not 0 <= i < gpu_count]
    if invalid:
        raise ValueError(
            f"deviceIds {list(device_ids)} name GPUs {invalid} that are not visible "
            f"(this server sees {gpu_count}: ids 0..{gpu_count - 1})"
        )
    return list(device_ids)


def default_worker_count(
    gpus: int, workers_per_device: int, default_workers_per_model: int | None
) -> int:
    """Workers for a model when nothing names a number: one per GPU times workers_per_device."""
    if default_workers_per_model is not None:
        return default_workers_per_model
    return max(1, gpus) * workers_per_device


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the whole machine)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class RoundRobin:
    """Hands out GPU ids in turn across all models, as TorchServe does, within each model's set."""

    def __init__(self) -> None:
        self._counter = 0

    def next(self, devices: Sequence[int]) -> int | None:
        if not devices:
            return None
        gpu = devices[self._counter % len(devices)]
        self._counter += 1
        return gpu
