"""`make bench`'s harness cannot rot: one short round against one real server, end to end.

The peers' virtualenv (KServe, Ray Serve, LitServe) takes minutes to install from PyPI, too much
for CI, so the smoke runs the harness against TorchServe 0.12, which the dev venv has: the real
archiver, the real server, the load generator, CPU accounting, the JSON, the table and the chart.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def test_one_short_round_against_torchserve_gives_json_table_and_chart(tmp_path: Path) -> None:
    out, chart = tmp_path / "bench.json", tmp_path / "bench.png"
    command = [sys.executable, "-m", "e2e.bench.run", "--servers", "torchserve"]
    command += ["--scenarios", "mlp-c16", "--rounds", "1", "--duration", "1", "--warmup", "0.5"]
    command += ["--out", str(out), "--chart", str(chart)]
    # where the harness keeps its archives and servers' state; short, as TorchServe's worker
    # sockets are made there and a socket's path has at most 107 bytes
    scratch = Path(tempfile.mkdtemp(prefix="bench-"))
    env = {**os.environ, "TMPDIR": str(scratch)}
    try:
        printed = subprocess.run(
            command, check=True, capture_output=True, text=True, timeout=240, env=env
        )
        left = list(scratch.iterdir())
    finally:
        shutil.rmtree(scratch)
    assert left == []  # the harness removes what it made
    results = json.loads(out.read_text())
    assert results["failed_to_start"] == {}, printed.stdout[-3000:]
    row = results["served"]["torchserve"]["mlp-c16"]
    assert row["requests"] > 0 and row["errors"] == 0 and row["failed_rounds"] == 0
    assert row["cpu_us_per_request"] > 0
    assert results["versions"]["torchserve"] == "0.12.0"
    assert "| mlp-c16 | torchserve | " in printed.stdout
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
