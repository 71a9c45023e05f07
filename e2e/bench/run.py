"""`make bench`: marfleet serve and TorchServe 0.12 side by side, in one run, on one machine.

Same archives (packed by torch-model-archiver), same worker count and batching settings, same
thread limits; both servers are up for the whole run but only one is under load at a time, in
short rounds that alternate which goes first (medians reported), and the load comes from a
separate process (`loadgen`). Scenarios:

    (a) overhead floor: tiny MLP, JSON body, batchSize 8 / maxBatchDelay 5 ms,
        concurrency 16 and 64 -> req/s, p50, p99
    (b) ResNet-18 (random weights), JPEG body, batch 1 (concurrency 4) and batch 8
        (maxBatchDelay 50 ms, concurrency 16) -> req/s, p99, and serving efficiency =
        served req/s / the same handler's in-process req/s at that batch size

Prints a Markdown table and writes every number to --out (JSON).

    .venv/bin/python -m e2e.bench.run --duration 10 --rounds 3
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marfleet.runtime.archive.reader import load_archive

from e2e.bench.archives import build_archives, jpeg_body, mlp_body
from e2e.bench.servers import RunningServer, start

SERVERS = ("torchserve", "marfleet")


@dataclass(frozen=True)
class Scenario:
    name: str
    model: str
    concurrency: int
    body_file: str
    content_type: str
    batch: int


SCENARIOS = (
    Scenario("mlp-c16", "mlp", 16, "mlp.json", "application/json", 8),
    Scenario("mlp-c64", "mlp", 64, "mlp.json", "application/json", 8),
    Scenario("resnet18-b1", "resnet_b1", 4, "image.jpg", "image/jpeg", 1),
    Scenario("resnet18-b8", "resnet_b8", 16, "image.jpg", "image/jpeg", 8),
)


def _python(module: str, *args: str, cwd: Path | None = None) -> dict[str, Any]:
    output = subprocess.run(
        [sys.executable, "-m", module, *args], check=True, capture_output=True, text=True, cwd=cwd
    ).stdout
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return result


def in_process(impl: str, model_dir: Path, batch: int, seconds: float) -> dict[str, Any]:
    args = ["--impl", impl, "--model-dir", str(model_dir), "--batch", str(batch)]
    return _python("e2e.bench.inprocess", *args, "--seconds", str(seconds))


def _in_process_sample(model_dir: Path, batch: int, seconds: float, impl: str) -> dict[str, Any]:
    return in_process(impl, model_dir, batch, seconds)


def _served_sample(
    servers: dict[str, RunningServer],
    scenario: Scenario,
    root: Path,
    duration: float,
    warmup: float,
    name: str,
) -> dict[str, Any]:
    return run_scenario(servers[name], scenario, root, duration, warmup)


def run_scenario(
    server: RunningServer, scenario: Scenario, root: Path, duration: float, warmup: float
) -> dict[str, Any]:
    before = server.cpu_seconds()
    result = _python(
        "e2e.bench.loadgen",
        "--url",
        f"{server.url('inference')}/predictions/{scenario.model}",
        "--body-file",
        str(root / scenario.body_file),
        "--content-type",
        scenario.content_type,
        "--concurrency",
        str(scenario.concurrency),
        "--duration",
        str(duration),
        "--warmup",
        str(warmup),
    )
    after = server.cpu_seconds()
    requests = max(1, int(result["requests"]))
    for part in ("frontend", "workers"):
        spent = after[part] - before[part]
        result[f"{part}_cpu_us_per_request"] = round(spent / requests * 1e6, 1)
    return result


def interleaved(rounds: int, measure: Callable[[str], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Measure every server `rounds` times, alternating which goes first; keep the medians.

    The machine is shared, so load from elsewhere comes and goes: alternating short rounds
    spreads it over both servers instead of letting it land on whichever ran second.
    """
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in SERVERS}
    for index in range(rounds):
        for name in SERVERS if index % 2 == 0 else tuple(reversed(SERVERS)):
            samples[name].append(measure(name))
            print(f"  {name} round {index + 1}: {json.dumps(samples[name][-1])}", flush=True)
    summary: dict[str, dict[str, Any]] = {}
    for name, runs in samples.items():
        keys = [k for k, v in runs[0].items() if isinstance(v, (int, float))]
        summary[name] = {key: round(statistics.median(run[key] for run in runs), 3) for key in keys}
        summary[name]["rounds"] = runs
    return summary


def table(results: dict[str, Any]) -> str:
    """Markdown: served numbers, and for ResNet-18 both efficiencies.

    efficiency: served req/s / in-process req/s (the issue's definition; wall clock, so it
    also measures how much CPU the shared machine happened to give each run).
    CPU efficiency: in-process CPU per request / served CPU per request (frontend + worker):
    the serving overhead alone, insensitive to what else the machine was doing.
    """
    lines = [
        "| scenario | server | req/s | p50 ms | p99 ms | efficiency | CPU efficiency "
        "| frontend CPU µs/req | worker CPU µs/req |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for scenario in SCENARIOS:
        for name in SERVERS:
            row = results["served"][name].get(scenario.name)
            if row is None:
                continue
            efficiency = cpu_efficiency = ""
            if scenario.model.startswith("resnet"):
                baseline = results["in_process"][name][str(scenario.batch)]
                served_cpu = row["frontend_cpu_us_per_request"] + row["workers_cpu_us_per_request"]
                efficiency = f"{row['rps'] / baseline['rps']:.0%}"
                cpu_efficiency = f"{baseline['cpu_us_per_request'] / served_cpu:.0%}"
            cpu = f"{row['frontend_cpu_us_per_request']} | {row['workers_cpu_us_per_request']}"
            lines.append(
                f"| {scenario.name} | {name} | {row['rps']} | {row['p50_ms']} | {row['p99_ms']} | "
                f"{efficiency} | {cpu_efficiency} | {cpu} |"
            )
    for name in SERVERS:
        for batch, baseline in results["in_process"][name].items():
            lines.append(
                f"| resnet18 in-process batch {batch} | {name} handler | {baseline['rps']} "
                f"| | | | | | {baseline['cpu_us_per_request']} |"
            )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per round")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--scenarios",
        nargs="+",
        choices=[scenario.name for scenario in SCENARIOS],
        default=[scenario.name for scenario in SCENARIOS],
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results/serve-vs-torchserve.json"))
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="marfleet-bench-"))
    store, work = root / "store", root / "work"
    store.mkdir()
    work.mkdir()
    build_archives(store, work)
    (root / "mlp.json").write_bytes(mlp_body())
    (root / "image.jpg").write_bytes(jpeg_body())
    model_dir = load_archive(store / "resnet18.mar", root / "resnet18-unpacked").model_dir
    servers: dict[str, RunningServer] = {}
    try:
        for name in SERVERS:
            servers[name] = start(name, store, root / name)
            servers[name].register("mlp.mar", "mlp", batch_size=8, max_batch_delay=5)
            servers[name].register("resnet18.mar", "resnet_b1", batch_size=1, max_batch_delay=5)
            servers[name].register("resnet18.mar", "resnet_b8", batch_size=8, max_batch_delay=50)
        results: dict[str, Any] = {"in_process": {}, "served": {name: {} for name in SERVERS}}
        scenarios = [scenario for scenario in SCENARIOS if scenario.name in args.scenarios]
        batches = sorted({s.batch for s in scenarios if s.model.startswith("resnet")})
        for batch in batches:
            print(f"in-process resnet18 batch {batch}", flush=True)
            summary = interleaved(
                args.rounds,
                functools.partial(_in_process_sample, model_dir, batch, args.duration),
            )
            for name in SERVERS:
                results["in_process"].setdefault(name, {})[str(batch)] = summary[name]
        for scenario in scenarios:
            print(scenario.name, flush=True)
            sample = functools.partial(
                _served_sample, servers, scenario, root, args.duration, args.warmup
            )
            summary = interleaved(args.rounds, sample)
            for name in SERVERS:
                results["served"][name][scenario.name] = summary[name]
    finally:
        for server in servers.values():
            server.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
