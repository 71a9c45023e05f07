"""marfleet serve on real NVIDIA GPUs: placement, narrowing, and a killed worker's memory.

Runs only where nvidia-smi sees a GPU (skipped elsewhere with that reason: CPU tests of
placement live in tests/unit/test_config_devices.py). `python -m e2e.bench.gpu` runs this
module first on the GPU machine. A probe handler reports, per request, what its worker was
given (`context.system_properties["gpu_id"]`), where its tensors live, which physical GPU that
is (UUID) and its pid; at load it holds HOLD_MIB of GPU memory, so a killed worker's memory
shows in nvidia-smi until the driver frees it. This test process never initialises CUDA
itself: GPU facts come from nvidia-smi, so its own context cannot blur the numbers.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from marfleet.runtime.workers.placement import installed_gpu_count

from e2e.support import wait_for
from tests.serving import Server, archive, serve

GPUS = installed_gpu_count()
pytestmark = pytest.mark.skipif(
    GPUS == 0, reason="needs an NVIDIA GPU: nvidia-smi is missing or lists none on this machine"
)

HOLD_MIB = 2048
PROBE = """
import os
import torch

HOLD_MIB = {hold_mib}


class Probe:
    def initialize(self, context):
        gpu_id = context.system_properties.get("gpu_id")
        self.gpu_id = gpu_id
        self.device = torch.device("cuda", gpu_id) if gpu_id is not None else torch.device("cpu")
        if self.device.type == "cuda":
            self.held = torch.ones(HOLD_MIB * 2**18, device=self.device)  # float32: 4 bytes
            torch.cuda.synchronize(self.device)

    def handle(self, data, context):
        tensor = torch.arange(4.0, device=self.device) * 2
        uuid = None
        if self.device.type == "cuda":
            uuid = "GPU-" + str(torch.cuda.get_device_properties(self.device).uuid)
        answer = {
            "gpu_id": context.system_properties.get("gpu_id"),
            "device": str(tensor.device),
            "sum": float(tensor.sum()),
            "uuid": uuid,
            "pid": os.getpid(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        }
        return [answer for _ in data]
""".replace("{hold_mib}", str(HOLD_MIB))


def smi(*query: str) -> list[list[str]]:
    output = subprocess.run(
        ["nvidia-smi", *query, "--format=csv,noheader,nounits"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    return [[field.strip() for field in line.split(",")] for line in output.splitlines() if line]


def same_gpu(uuid: str | None, index: int) -> bool:
    """Whether torch's UUID of a device names nvidia-smi's GPU `index` (hex digits compared)."""
    (row,) = smi("--query-gpu=uuid", f"--id={index}")

    def digits(text: str) -> str:
        return "".join(c for c in text.lower().removeprefix("gpu-") if c in "0123456789abcdef")

    return uuid is not None and digits(uuid) == digits(row[0])


def used_mib(index: int) -> int:
    return int(smi("--query-gpu=memory.used", f"--id={index}")[0][0])


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gpu-store")
    handler = root / "probe_handler.py"
    handler.write_text(PROBE)
    archive(root, "probe", handler)
    return root


@pytest.fixture
def server_with(store: Path, tmp_path: Path) -> Iterator[Any]:
    """start(env=..., **properties) -> a running marfleet serve, all stopped after the test."""
    with ExitStack() as stack:
        count = iter(range(100))

        def start(env: dict[str, str] | None = None, **properties: str) -> Server:
            workdir = tmp_path / f"server-{next(count)}"
            settings = {"enable_model_api": "true", **properties}
            return stack.enter_context(serve(store, workdir, properties=settings, env=env))

        yield start


def register(server: Server, workers: int) -> None:
    response = httpx.post(
        f"{server.management}/models",
        params={"url": "probe.mar", "initial_workers": workers, "synchronous": "true"},
        headers=server.auth,
        timeout=300,
    )
    assert response.status_code == 200, response.text


def workers_of(server: Server) -> list[dict[str, Any]]:
    response = httpx.get(f"{server.management}/models/probe", headers=server.auth, timeout=30)
    assert response.status_code == 200, response.text
    workers: list[dict[str, Any]] = response.json()[0]["workers"]
    return workers


def probe_until(server: Server, pids: set[int]) -> dict[int, dict[str, Any]]:
    """Ask until every worker pid in `pids` has answered once; {pid: answer}."""
    seen: dict[int, dict[str, Any]] = {}

    def all_answered() -> bool:
        response = httpx.post(f"{server.inference}/predictions/probe", json={}, timeout=60)
        assert response.status_code == 200, response.text
        answer = response.json()
        seen[answer["pid"]] = answer
        return pids <= set(seen)

    wait_for(all_answered, 60, f"answers from workers {sorted(pids)}", interval=0)
    return seen


def test_workers_get_gpus_round_robin_and_compute_on_them(server_with: Any) -> None:
    server = server_with()
    register(server, workers=2 * GPUS)
    workers = workers_of(server)
    assert len(workers) == 2 * GPUS
    assigned = {w["pid"]: int(w["gpuUsage"].removeprefix("gpuId::")) for w in workers}
    assert sorted(assigned.values()) == sorted(list(range(GPUS)) * 2)  # round robin
    for pid, answer in probe_until(server, set(assigned)).items():
        assert answer["gpu_id"] == assigned[pid]
        assert answer["device"] == f"cuda:{assigned[pid]}"
        assert answer["sum"] == 12.0
        assert same_gpu(answer["uuid"], assigned[pid]), answer


def test_cuda_visible_devices_and_number_of_gpu_narrow_the_set(server_with: Any) -> None:
    last = GPUS - 1
    narrowed = server_with(env={"CUDA_VISIBLE_DEVICES": str(last)})
    register(narrowed, workers=2)
    for answer in probe_until(narrowed, {w["pid"] for w in workers_of(narrowed)}).values():
        assert (answer["gpu_id"], answer["device"]) == (0, "cuda:0")
        assert same_gpu(answer["uuid"], last), answer  # visible index 0 is the last GPU
        assert answer["cuda_visible_devices"] == str(last)
    one = server_with(number_of_gpu="1")
    register(one, workers=2)
    assert {w["gpuUsage"] for w in workers_of(one)} == {"gpuId::0"}
    for settings in ({"env": {"CUDA_VISIBLE_DEVICES": ""}}, {"number_of_gpu": "0"}):
        cpu_only = server_with(**settings)
        register(cpu_only, workers=1)
        (worker,) = workers_of(cpu_only)
        assert worker["gpu"] is False, settings
        (answer,) = probe_until(cpu_only, {worker["pid"]}).values()
        assert (answer["gpu_id"], answer["device"], answer["uuid"]) == (None, "cpu", None)


def test_a_worker_killed_while_holding_gpu_memory_comes_back_and_the_memory_is_freed(
    server_with: Any,
) -> None:
    before = used_mib(0)
    server = server_with(number_of_gpu="1")
    register(server, workers=1)
    (worker,) = workers_of(server)
    loaded = used_mib(0)
    assert loaded - before >= HOLD_MIB, f"the worker holds {loaded - before} MiB"
    os.kill(worker["pid"], signal.SIGKILL)

    def replaced() -> dict[str, Any] | None:
        current = workers_of(server)
        fresh = len(current) == 1 and current[0]["pid"] != worker["pid"]
        return current[0] if fresh and current[0]["status"] == "READY" else None

    successor = wait_for(replaced, 120, "a new worker after SIGKILL", interval=0.5)
    (answer,) = probe_until(server, {successor["pid"]}).values()
    assert answer["device"] == "cuda:0"
    # the dead worker's HOLD_MIB (and CUDA context) went back to the driver: one worker's worth
    # is in use again, not two
    wait_for(
        lambda: used_mib(0) < loaded + HOLD_MIB // 2,
        30,
        f"the killed worker's GPU memory to be released ({loaded} MiB used before the kill)",
    )
    assert used_mib(0) > loaded - HOLD_MIB // 2  # and the successor holds its own
    listed = {int(row[0]) for row in smi("--query-compute-apps=pid") if row[0].isdigit()}
    assert worker["pid"] not in listed
