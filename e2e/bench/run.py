"""`make bench`: marfleet serve and TorchServe 0.12 side by side, in one run, on one machine.

Same archives (packed by torch-model-archiver), same worker count and batching settings, same
thread limits, token authorization on as both ship it; every server is up for the whole run but
only one runs at a time (the others are frozen with SIGSTOP, so an idle one's background work
costs the measured one nothing), in short rounds that alternate which goes first (medians
reported), and the load comes from a separate process (`loadgen`). The in-process limits are
measured first, before any server starts. Scenarios:

    (a) overhead floor: tiny MLP, JSON body, batchSize 8 / maxBatchDelay 5 ms,
        concurrency 16 and 64 -> req/s, p50, p99; and the same model over gRPC (TorchServe's
        Predictions call, concurrency 16, `grpc_loadgen`; marfleet and TorchServe only)
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
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from marfleet.runtime.archive.reader import load_archive

from e2e.bench import chart, peer_venv
from e2e.bench.archives import build_archives, jpeg_body, mlp_body
from e2e.bench.servers import (
    MAR_SERVERS,
    MODELS,
    PEERS,
    Request,
    RunningServer,
    request_for,
    start,
    start_peer,
)

# what each server runs with: the CPU budget the table states (one torch thread everywhere)
BUDGETS = {
    "marfleet": "1 frontend process + 1 worker process per model",
    "torchserve": "1 JVM frontend + 1 worker process per model",
    "kserve": "1 process (uvicorn, 1 worker), models in-process, no server batching",
    "ray": "Ray head (GCS, raylet) + controller + HTTP proxy + 1 replica per model",
    "litserve": "3 uvicorn API processes (its default: one per inference worker) "
    "+ 1 inference worker process per model",
}


@dataclass(frozen=True)
class Scenario:
    name: str
    model: str
    concurrency: int
    body_file: str
    content_type: str
    batch: int
    transport: str = "http"  # or "grpc": TorchServe's Predictions call (marfleet, torchserve)


SCENARIOS = (
    Scenario("mlp-c16", "mlp", 16, "mlp.json", "application/json", 8),
    Scenario("mlp-c64", "mlp", 64, "mlp.json", "application/json", 8),
    Scenario("mlp-grpc-c16", "mlp", 16, "mlp.json", "application/json", 8, "grpc"),
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


def handler_of(server: str) -> str:
    """Whose handler code a server runs: the peers all run `peer_apps.Predictor`."""
    return server if server in MAR_SERVERS else "peer"


def _in_process_sample(model_dir: Path, batch: int, seconds: float, impl: str) -> dict[str, Any]:
    return in_process(impl, model_dir, batch, seconds)


def _served_sample(
    servers: dict[str, RunningServer],
    scenario: Scenario,
    bodies: Path,
    duration: float,
    warmup: float,
    name: str,
) -> dict[str, Any]:
    return run_scenario(servers[name], scenario, bodies, duration, warmup)


def body_file(bodies: Path, server: str, model: str) -> Path:
    return bodies / f"{server}-{model}.body"


def run_scenario(
    server: RunningServer, scenario: Scenario, bodies: Path, duration: float, warmup: float
) -> dict[str, Any]:
    """One round against `server`, the others frozen meanwhile (`RunningServer.pause`)."""
    server.resume()
    try:
        return _load(server, scenario, bodies, duration, warmup)
    finally:
        server.pause()


def _load(
    server: RunningServer, scenario: Scenario, bodies: Path, duration: float, warmup: float
) -> dict[str, Any]:
    request = requests_for(server.name, bodies)[scenario.model]
    before = server.cpu_seconds()
    timing = ["--duration", str(duration), "--warmup", str(warmup)]
    load = ["--body-file", str(body_file(bodies, server.name, scenario.model))]
    load += ["--concurrency", str(scenario.concurrency)]
    for header, value in server.bearer("inference").items():  # marfleet, TorchServe: tokens on
        load += ["--header", f"{header}: {value}"]
    if scenario.transport == "grpc":
        target = f"127.0.0.1:{server.ports['grpc']}"
        result = _python(
            "e2e.bench.grpc_loadgen", "--target", target, "--model", scenario.model, *load, *timing
        )
    else:
        url = f"{server.url('inference')}{request.path}"
        result = _python(
            "e2e.bench.loadgen",
            *("--url", url, "--content-type", request.content_type),
            *load,
            *timing,
        )
    after = server.cpu_seconds()
    # the CPU was read before the warm-up and after the last answer: divide by every answer
    requests = max(1, int(result.pop("answered_with_warmup", result["requests"])))
    for part in ("frontend", "workers"):
        spent = after[part] - before[part]
        result[f"{part}_cpu_us_per_request"] = round(spent / requests * 1e6, 1)
    result["cpu_us_per_request"] = round(
        result["frontend_cpu_us_per_request"] + result["workers_cpu_us_per_request"], 1
    )
    return result


def requests_for(server: str, bodies: Path) -> dict[str, Request]:
    row, jpeg = (bodies / "mlp.json").read_bytes(), (bodies / "image.jpg").read_bytes()
    return {model: request_for(server, model, row, jpeg) for model in MODELS}


def write_bodies(bodies: Path, servers: Sequence[str]) -> None:
    (bodies / "mlp.json").write_bytes(mlp_body())
    (bodies / "image.jpg").write_bytes(jpeg_body())
    for server in servers:
        for model, request in requests_for(server, bodies).items():
            body_file(bodies, server, model).write_bytes(request.body)


def interleaved(
    rounds: int, measure: Callable[[str], dict[str, Any]], names: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Measure every server `rounds` times, rotating which goes first; keep the medians.

    The machine is shared, so load from elsewhere comes and goes: rotating short rounds
    spreads it over all servers instead of letting it land on whichever ran last. A round
    that fails is recorded as such (`failed`) and the run goes on; the medians are over the
    rounds that completed.
    """
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for index in range(rounds if names else 0):
        shift = index % len(names)
        for name in [*names[shift:], *names[:shift]]:
            try:
                sample = measure(name)
            except (subprocess.CalledProcessError, OSError, ValueError) as error:
                detail = getattr(error, "stderr", None) or str(error)
                sample = {"failed": str(detail).strip()[-500:]}
            samples[name].append(sample)
            print(f"  {name} round {index + 1}: {json.dumps(sample)}", flush=True)
    summary: dict[str, dict[str, Any]] = {}
    for name, runs in samples.items():
        done = [run for run in runs if "failed" not in run]
        if not done:
            summary[name] = {"failed": runs[-1]["failed"], "rounds": runs}
            continue
        keys = [k for k, v in done[0].items() if isinstance(v, (int, float))]
        summary[name] = {key: round(statistics.median(run[key] for run in done), 3) for key in keys}
        summary[name]["errors"] = sum(sum(run.get("errors", {}).values()) for run in done)
        summary[name]["failed_rounds"] = len(runs) - len(done)
        summary[name]["rounds"] = runs
    return summary


def _efficiency(results: dict[str, Any], scenario: Scenario, name: str, row: dict[str, Any]) -> str:
    """served req/s / the same handler's in-process req/s at that batch size (ResNet only)."""
    if not scenario.model.startswith("resnet"):
        return ""
    baseline = results["in_process"].get(handler_of(name), {}).get(str(scenario.batch), {})
    if "rps" not in baseline:
        return "n/a"
    return f"{row['rps'] / baseline['rps']:.0%}"


def table(results: dict[str, Any]) -> str:
    """Markdown: served numbers per scenario and server, then the in-process limits.

    efficiency: served req/s / in-process req/s of the same handler code at that batch size
    (wall clock, so it also measures how much CPU the shared machine happened to give each
    run). CPU µs/req: user+system time of all the server's processes over the round /
    requests answered; frontend is everything but the processes that run the model.
    """
    lines = [
        "| scenario | server | req/s | p50 ms | p99 ms | CPU µs/req | frontend CPU µs/req "
        "| model-process CPU µs/req | efficiency | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    names = results["servers"]
    for scenario in SCENARIOS:
        for name in names:
            if name in results["failed_to_start"]:
                if scenario.name in results["scenarios"]:
                    lines.append(f"| {scenario.name} | {name} | did not start | | | | | | | |")
                continue
            row = results["served"][name].get(scenario.name)
            if row is None:
                continue
            if "failed" in row:
                lines.append(f"| {scenario.name} | {name} | every round failed | | | | | | | |")
                continue
            errors = str(row["errors"]) + (
                f" ({row['failed_rounds']} rounds failed)" if row["failed_rounds"] else ""
            )
            lines.append(
                f"| {scenario.name} | {name} | {row['rps']} | {row['p50_ms']} | {row['p99_ms']} "
                f"| {row['cpu_us_per_request']} | {row['frontend_cpu_us_per_request']} "
                f"| {row['workers_cpu_us_per_request']} "
                f"| {_efficiency(results, scenario, name, row)} | {errors} |"
            )
    for impl, batches in results["in_process"].items():
        for batch, baseline in batches.items():
            rps = baseline.get("rps", "failed")
            lines.append(
                f"| resnet18 in-process batch {batch} | {impl} handler | {rps} "
                f"| | | {baseline.get('cpu_us_per_request', '')} | | | | |"
            )
    return "\n".join(lines)


REGISTRATIONS = {  # model -> (archive, batch size, max batch delay ms)
    "mlp": ("mlp.mar", 8, 5),
    "resnet_b1": ("resnet18.mar", 1, 5),
    "resnet_b8": ("resnet18.mar", 8, 50),
}


def start_all(
    names: Sequence[str],
    models: Sequence[str],
    store: Path,
    root: Path,
    peer_python: Path | None,
    servers: dict[str, RunningServer],
) -> dict[str, str]:
    """Start each server into `servers` (the caller stops them); why each one that failed did.

    marfleet and TorchServe register only `models`; the peers always serve all three. A
    server gets a second try, on fresh ports and in a fresh directory: on a shared machine a
    port picked free can be taken before the server binds it, and one failed start should
    not cost the whole comparison (as one failed round does not)."""
    failed: dict[str, str] = {}
    weights = {"mlp": root / "work" / "mlp.pt", "resnet18": root / "work" / "resnet18.pt"}
    for name in names:
        if name not in MAR_SERVERS and peer_python is None:
            failed[name] = f"{name} needs --peer-venv"
            print(f"  {name} did not start: {failed[name]}", flush=True)
            continue
        for attempt in (1, 2):
            print(f"starting {name}" + (" again" if attempt > 1 else ""), flush=True)
            workdir = root / (name if attempt == 1 else f"{name}-{attempt}")
            try:
                servers[name] = _start_one(name, models, store, workdir, peer_python, weights)
            except (RuntimeError, TimeoutError, ValueError, OSError) as error:
                failed[name] = str(error)
                print(f"  {name} did not start: {error}", flush=True)
                continue
            failed.pop(name, None)
            servers[name].pause()  # frozen until its rounds: the next one starts undisturbed
            break
    return failed


def _start_one(
    name: str,
    models: Sequence[str],
    store: Path,
    workdir: Path,
    peer_python: Path | None,
    weights: dict[str, Path],
) -> RunningServer:
    """One server started and serving `models`, or an error (nothing left running)."""
    if name not in MAR_SERVERS:
        assert peer_python is not None  # start_all checked
        requests = requests_for(name, workdir.parent / "bodies")
        return start_peer(name, peer_python, weights, requests, workdir)
    server = start(name, store, workdir, token_auth=True)
    try:
        for model in models:
            archive, batch, delay = REGISTRATIONS[model]
            server.register(archive, model, batch_size=batch, max_batch_delay=delay)
    except BaseException:
        server.stop()
        raise
    return server


def server_versions(names: Sequence[str], peer_python: Path | None) -> dict[str, str]:
    found = {"marfleet": metadata.version("marfleet"), "torchserve": metadata.version("torchserve")}
    found["torch"] = metadata.version("torch")
    if peer_python is not None and any(name in PEERS for name in names):
        peers = peer_venv.versions(peer_python)
        found.update({key: v for key, v in peers.items() if key != "torch"})
        found["torch (peer venv)"] = peers["torch"]
    return {key: value for key, value in found.items() if key in names or "torch" in key}


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
    parser.add_argument(
        "--servers", nargs="+", choices=MAR_SERVERS + PEERS, default=["torchserve", "marfleet"]
    )
    parser.add_argument(
        "--peer-venv", type=Path, help="the peers' virtualenv; created from PyPI when missing"
    )
    parser.add_argument("--in-process-seconds", type=float, help="default: --duration")
    parser.add_argument("--out", type=Path, default=Path("bench-results/serve-vs-torchserve.json"))
    parser.add_argument("--chart", type=Path, help="also draw the results as this PNG")
    args = parser.parse_args(argv)
    names: list[str] = list(dict.fromkeys(args.servers))
    peer_python = None
    if any(name in PEERS for name in names):
        if args.peer_venv is None:
            parser.error(f"{', '.join(n for n in names if n in PEERS)} need --peer-venv")
        peer_python = peer_venv.ensure(args.peer_venv.absolute())
    root = Path(tempfile.mkdtemp(prefix="marfleet-bench-"))
    try:
        return _measure(args, argv, names, peer_python, root)
    finally:  # the archives, bodies and servers' state: the results are in --out
        shutil.rmtree(root, ignore_errors=True)


def _measure(
    args: argparse.Namespace,
    argv: list[str],
    names: list[str],
    peer_python: Path | None,
    root: Path,
) -> int:
    store, work, bodies = root / "store", root / "work", root / "bodies"
    for folder in (store, work, bodies):
        folder.mkdir()
    scenarios = [scenario for scenario in SCENARIOS if scenario.name in args.scenarios]
    models = list(dict.fromkeys(scenario.model for scenario in scenarios))
    resnet = peer_python is not None or any(model.startswith("resnet") for model in models)
    build_archives(store, work, resnet=resnet)
    write_bodies(bodies, names)
    results: dict[str, Any] = {
        "command": " ".join(["python -m e2e.bench.run", *argv]),
        "servers": names,
        "scenarios": [scenario.name for scenario in scenarios],
        "budgets": {name: BUDGETS[name] + ", 1 torch thread per model process" for name in names},
        "versions": server_versions(names, peer_python),
        "in_process": {},
        "served": {name: {} for name in names},
    }
    # the limits first, with no server running at all
    impls = list(dict.fromkeys(handler_of(name) for name in names))
    batches = sorted({s.batch for s in scenarios if s.model.startswith("resnet")})
    if batches:
        model_dir = load_archive(store / "resnet18.mar", root / "resnet18-unpacked").model_dir
    in_seconds = args.in_process_seconds or args.duration
    for batch in batches:
        print(f"in-process resnet18 batch {batch}", flush=True)
        sample = functools.partial(_in_process_sample, model_dir, batch, in_seconds)
        summary = interleaved(args.rounds, sample, impls)
        for impl in impls:
            results["in_process"].setdefault(impl, {})[str(batch)] = summary[impl]
    servers: dict[str, RunningServer] = {}
    try:
        results["failed_to_start"] = start_all(names, models, store, root, peer_python, servers)
        up = [name for name in names if name in servers]
        for scenario in scenarios:
            print(scenario.name, flush=True)
            measure = functools.partial(
                _served_sample, servers, scenario, bodies, args.duration, args.warmup
            )
            serving = up if scenario.transport == "http" else [n for n in up if n in MAR_SERVERS]
            summary = interleaved(args.rounds, measure, serving)
            for name in serving:
                results["served"][name][scenario.name] = summary[name]
    finally:
        for server in servers.values():
            server.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    if args.chart is not None:
        chart.draw(results, args.chart)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
