"""`make demo` as a user meets it: Ctrl-C half-way leaves nothing behind, a full run prints real
predictions split 90/10 and then 50/50, the docs' `bash demo` blocks work against the cluster it
leaves running, a second run works too, and `down` ends every process, removes every state
directory and leaves no mount behind.

The demo runs as `python -m e2e.demo` (what the Makefile runs) with its cluster and state in
this test's temporary directory, so it never touches a demo a developer has running.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from e2e.demo.processes import Entry, session_members, start_ticks
from e2e.docs import blocks
from e2e.localcluster.toolchain import HELM, KUBERNETES

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SPLIT_LINE = re.compile(r"^\s+(stable|canary)\s+█*\s+(\d+) answers\s+[\d.]+ %\s+\(weight (\d+)\)$")


@dataclass(frozen=True)
class DemoRun:
    root: Path

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def cluster_dir(self) -> Path:
        return self.root / "clusters" / "demo"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "MARFLEET_CLUSTERS": str(self.root / "clusters"),
            "PYTHONSAFEPATH": "1",
        }

    def command(self, action: str) -> list[str]:
        return [sys.executable, "-m", "e2e.demo", action, "--state-dir", str(self.state_dir)]

    def run(self, action: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(action),
            cwd=REPO,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=400,
        )

    def started(self) -> list[Entry]:
        """Everything the demo and its cluster have running now, from their state files."""
        entries = []
        book = self.state_dir / "processes.json"
        if book.exists():
            entries += [Entry(**item) for item in json.loads(book.read_text())]
        cluster = self.cluster_dir / "cluster.json"
        if cluster.exists():
            for name, pid in json.loads(cluster.read_text())["pids"].items():
                ticks = start_ticks(pid)
                if ticks is not None:
                    entries.append(Entry(f"cluster/{name}", pid, ticks, ""))
        return entries

    def etcd_data(self) -> Path:
        return Path(json.loads((self.cluster_dir / "cluster.json").read_text())["etcd_data"])


def still_running(entries: list[Entry]) -> dict[str, list[int]]:
    return {e.name: members for e in entries if (members := session_members(e))}


def splits(output: str) -> list[dict[str, tuple[int, int]]]:
    """Per prediction round: variant -> (answers, weight), as the demo printed them."""
    rounds: list[dict[str, tuple[int, int]]] = []
    for line in output.splitlines():
        if "predictions in" in line:
            rounds.append({})
        elif (match := SPLIT_LINE.match(line)) and rounds:
            rounds[-1][match.group(1)] = (int(match.group(2)), int(match.group(3)))
    return rounds


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[DemoRun]:
    run = DemoRun(tmp_path)
    try:
        yield run
    finally:
        if run.state_dir.exists() or run.cluster_dir.exists():
            run.run("down")


def interrupt_after(run: DemoRun, marker: str) -> tuple[int, str, list[Entry]]:
    """Start `up`, send Ctrl-C (SIGINT to its process group) once `marker` is printed."""
    process = subprocess.Popen(
        run.command("up"),
        cwd=REPO,
        env=run.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    seen = []
    for line in process.stdout:
        seen.append(line)
        if marker in line:
            break
    started = run.started()
    os.killpg(process.pid, signal.SIGINT)
    rest, _ = process.communicate(timeout=120)
    return process.returncode, "".join(seen) + rest, started


def test_demo_up_twice_then_down_leaves_nothing(demo: DemoRun) -> None:
    code, output, interrupted = interrupt_after(demo, "[5/11]")
    assert code == 130, output[-3000:]
    assert "interrupted: everything the demo started has been removed" in output
    names = [e.name for e in interrupted]
    assert any(n.startswith("cluster/") for n in names), names
    assert any(n.startswith("marfleet-operator-") for n in names), names
    assert not still_running(interrupted)
    assert not demo.state_dir.exists() and not demo.cluster_dir.exists()

    first = demo.run("up")
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    out = first.stdout
    assert out.startswith("marfleet demo on a simulated cluster")
    assert "on gpu-h100-node (NVIDIA-H100-80GB-HBM3)" in out
    rounds = splits(out)
    assert len(rounds) == 2, out[-3000:]
    for answered in rounds:
        total = sum(count for count, _ in answered.values())
        for variant, (count, weight) in answered.items():
            assert abs(count - total * weight / 100) <= 2, (variant, answered)
    assert [{v: w for v, (_, w) in r.items()} for r in rounds] == [
        {"stable": 90, "canary": 10},
        {"stable": 50, "canary": 50},
    ]
    assert re.search(r'stable answered .* "model_version": "1.0"', out)
    assert re.search(r'canary answered .* "model_version": "2.0"', out)
    assert re.search(r"classifier\s+True\s+http://classifier.demo.svc.cluster.local", out)
    # The operator is pointed at the demo's Prometheus for rollouts (chart rollout.prometheusUrl),
    # which has the canary's answers by version.
    assert re.search(r"✓ rollout analysis source  canary [1-9]\d* answers of version 2\.0", out)
    running = demo.started()
    assert len(running) >= 10, [e.name for e in running]  # 5 cluster, operator, 2 servers, ...
    assert not [e.name for e in running if not session_members(e)]

    env = {
        **demo.env(),
        "KUBECONFIG": str(demo.cluster_dir / "kubeconfig"),
        "PATH": os.pathsep.join(
            str(d) for d in (KUBERNETES.bin_dir, HELM.bin_dir, Path(sys.executable).parent)
        )
        + f"{os.pathsep}{os.environ['PATH']}",
        "NS": "demo",
        "ISVC": "classifier",
    }
    documented = blocks.marked(blocks.DEMO)
    assert len(documented) >= 5
    for marked in documented:
        result = blocks.run(marked, REPO, env, timeout=180)
        assert result.returncode == 0, f"{marked.name}:\n{result.stdout[-2000:]}{result.stderr}"

    second = demo.run("up")
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-2000:]
    assert "already running" in second.stdout
    assert "stopped an earlier run's processes" in second.stdout
    local = [e for e in running if not e.name.startswith("cluster/")]  # the cluster is reused
    assert not still_running(local), "the second run left the first run's processes"
    etcd_data = demo.etcd_data()
    everything = running + demo.started()

    down = demo.run("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert not still_running(everything)
    assert not demo.state_dir.exists()
    assert not demo.cluster_dir.exists()
    assert not etcd_data.exists()
    mounts = Path("/proc/mounts").read_text()
    assert str(demo.root) not in mounts
