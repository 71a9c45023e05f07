"""Worker placement: visible GPUs, per-model devices, TorchServe's round robin.

These run without a GPU: the count of installed GPUs is an input, and the nvidia-smi probe
takes the command runner as a parameter, the only way to see its parsing on a GPU-less machine.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from marfleet.runtime.workers.placement import (
    RoundRobin,
    default_worker_count,
    installed_gpu_count,
    model_devices,
    visible_gpu_count,
)


@pytest.mark.parametrize(
    ("visible", "installed", "cap", "expected"),
    [
        (None, 8, None, 8),
        ("0,1", 8, None, 2),
        ("3", 8, None, 1),
        ("", 8, None, 0),
        ("-1", 8, None, 0),
        ("0,1,-1,2", 8, None, 2),  # CUDA stops at the first invalid entry
        ("GPU-aaaa,GPU-bbbb", 8, None, 2),
        ("0,1,2,3", 2, None, 2),
        (None, 8, 3, 3),
        ("0,1", 8, 0, 0),
    ],
)
def test_visible_gpu_count(
    visible: str | None, installed: int, cap: int | None, expected: int
) -> None:
    env = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    assert visible_gpu_count(env, installed, cap) == expected


def test_installed_gpu_count_parses_nvidia_smi() -> None:
    def four_gpus(command: Sequence[str]) -> str:
        assert command[0] == "nvidia-smi"
        return "0\n1\n2\n3\n"

    def failing(command: Sequence[str]) -> str:
        raise OSError("nvidia-smi: driver not loaded")

    assert installed_gpu_count(four_gpus) == 4
    assert installed_gpu_count(failing) == 0


def test_model_devices() -> None:
    assert model_devices(0, "", None) == []
    assert model_devices(4, "cpu", None) == []
    assert model_devices(4, "", None) == [0, 1, 2, 3]
    assert model_devices(4, "gpu", (2, 3)) == [2, 3]
    with pytest.raises(ValueError, match="not visible"):
        model_devices(2, "gpu", (0, 5))
    with pytest.raises(ValueError, match="no GPU is visible"):
        model_devices(0, "gpu", None)


def test_round_robin_spreads_workers_over_gpus_across_models() -> None:
    placement = RoundRobin()
    first_model = [placement.next([0, 1, 2, 3]) for _ in range(2)]
    second_model = [placement.next([0, 1, 2, 3]) for _ in range(3)]
    assert first_model == [0, 1]
    assert second_model == [2, 3, 0]
    assert placement.next([]) is None
    assert [placement.next([5, 6]) for _ in range(2)] in ([5, 6], [6, 5])


def test_default_worker_count_is_one_per_gpu_times_workers_per_device() -> None:
    assert default_worker_count(gpus=4, workers_per_device=2, default_workers_per_model=None) == 8
    assert default_worker_count(gpus=0, workers_per_device=1, default_workers_per_model=None) == 1
    assert default_worker_count(gpus=4, workers_per_device=2, default_workers_per_model=3) == 3
