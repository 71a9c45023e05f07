"""What `marfleet router` costs: latency added and maximum req/s, through the router vs direct.

Two upstreams, each measured directly and through a router (fixed weight 100 to it):

    runtime   a real `marfleet serve` with the tiny MLP (batchSize 8 / maxBatchDelay 5 ms):
              what a user sees in front of a model server
    stand-in  e2e.bench.router_upstream, which answers at once: the router's own ceiling

Load comes from `loadgen` in its own process; concurrency 1 gives the latency the router adds
(p50/p99 through it minus direct), concurrency 32 the maximum req/s. Rounds alternate which
path goes first and medians are reported, because the machine is shared. The router's CPU
per request is read from its process. Prints a Markdown table; --out writes every number.

    .venv/bin/python -m e2e.bench.router_overhead --duration 8 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import psutil

from e2e.bench.archives import build_archives, mlp_body
from e2e.bench.router_procs import Proc, router, upstream
from e2e.bench.servers import start

PATHS = ("direct", "router")
CONCURRENCY = (1, 32)


def loadgen(url: str, body: Path, concurrency: int, duration: float) -> dict[str, Any]:
    output = subprocess.run(
        [
            sys.executable,
            "-m",
            "e2e.bench.loadgen",
            "--url",
            url,
            "--body-file",
            str(body),
            "--concurrency",
            str(concurrency),
            "--duration",
            str(duration),
            "--warmup",
            "1",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return result


def through_router(
    proc: Proc, path: str, body: Path, concurrency: int, duration: float
) -> dict[str, Any]:
    """Load through the router, plus the router's CPU microseconds per request."""
    process = psutil.Process(proc.process.pid)
    before = sum(process.cpu_times()[:2])
    result = loadgen(proc.url + path, body, concurrency, duration)
    spent = sum(process.cpu_times()[:2]) - before
    result["router_cpu_us_per_request"] = round(spent / max(1, result["requests"]) * 1e6, 1)
    return result


def compare(
    direct_url: str, router_proc: Proc, path: str, body: Path, rounds: int, duration: float
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for concurrency in CONCURRENCY:
        samples: dict[str, list[dict[str, Any]]] = {name: [] for name in PATHS}
        for index in range(rounds):
            for name in PATHS if index % 2 == 0 else tuple(reversed(PATHS)):
                if name == "direct":
                    sample = loadgen(direct_url + path, body, concurrency, duration)
                else:
                    sample = through_router(router_proc, path, body, concurrency, duration)
                samples[name].append(sample)
                print(
                    f"  c={concurrency} {name} round {index + 1}: {json.dumps(sample)}", flush=True
                )
        results[f"c{concurrency}"] = {
            name: {
                key: round(statistics.median(s[key] for s in runs), 3)
                for key in ("rps", "p50_ms", "p99_ms", "router_cpu_us_per_request")
                if key in runs[0]
            }
            for name, runs in samples.items()
        }
    return results


@contextmanager
def runtime(work: Path) -> Iterator[str]:
    store = work / "store"
    store.mkdir(parents=True)
    build_archives(store, work)
    server = start("marfleet", store, work / "serve")
    try:
        server.register("mlp.mar", "mlp", 8, 5)
        yield server.url("inference")
    finally:
        server.stop()


def table(results: dict[str, Any]) -> str:
    lines = [
        "| upstream | concurrency | direct req/s | router req/s | direct p50 / p99 ms "
        "| router p50 / p99 ms | added p50 / p99 ms | router CPU µs/req |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for upstream_name, by_concurrency in results.items():
        for key, pair in by_concurrency.items():
            d, r = pair["direct"], pair["router"]
            lines.append(
                f"| {upstream_name} | {key[1:]} | {d['rps']} | {r['rps']} "
                f"| {d['p50_ms']} / {d['p99_ms']} | {r['p50_ms']} / {r['p99_ms']} "
                f"| {r['p50_ms'] - d['p50_ms']:.3f} / {r['p99_ms'] - d['p99_ms']:.3f} "
                f"| {r['router_cpu_us_per_request']} |"
            )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="router_overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="marfleet-router-bench-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        body = work / "mlp.json"
        body.write_bytes(mlp_body())
        serve_url = stack.enter_context(runtime(work))
        stand_in = stack.enter_context(upstream("stand-in"))
        for name, url, path in (
            ("runtime", serve_url, "/predictions/mlp"),
            ("stand-in", stand_in.url, "/predictions/mlp"),
        ):
            print(f"{name}:", flush=True)
            with router({"v": url}, "--weights", "v=100") as proc:
                results[name] = compare(url, proc, path, body, args.rounds, args.duration)
    print(table(results))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
