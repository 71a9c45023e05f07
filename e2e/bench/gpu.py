"""Scenario `resnet50-gpu`: marfleet serve and TorchServe 0.12 serving ResNet-50 on a GPU.

One command on any machine with one or more NVIDIA GPUs (and Java 17 for TorchServe):

    python -m e2e.bench.gpu --out bench-results/resnet50-gpu

A random-weight torchvision ResNet-50 (TorchScript) behind the built-in `image_classifier`
handler, packed once by the real torch-model-archiver and loaded by both servers; the
benchmark's 320x240 JPEG in every request. For each batch size (1, 8, 32) it measures

    (a) the handler in-process on GPU 0, no server (`inprocess`): the limit, for each
        server's own handler;
    (b) `marfleet serve` with 1 and 2 workers on the GPU;
    (c) TorchServe with the same archive, workers, batch settings and threads per worker;

with closed-loop load from `loadgen` (several processes, depth x batch x workers connections,
depth 3 by default, so a full batch is always waiting while one runs and the answered clients'
next requests are on their way), and reports req/s, p50/p99, mean GPU utilisation
(nvidia-smi sampled every 200 ms during the counted seconds) and efficiency = served req/s /
in-process req/s of the same handler. Before the benchmark it runs the GPU correctness tests
(tests/integration/test_gpu_serving.py). Everything lands under --out as it is measured
(results.json, table.md, the servers' logs and final metrics), so a run cut short still
leaves its numbers.

Without a GPU it runs the same steps on the CPU (for trying the script; numbers mean little),
and without Java it says so and leaves TorchServe out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from marfleet.runtime.archive.reader import load_archive
from marfleet.runtime.workers.placement import installed_gpu_count

from e2e.bench.archives import jpeg_body, resnet_archive
from e2e.bench.servers import RunningServer, start

CHECKS = "tests/integration/test_gpu_serving.py"


class GpuSampler:
    """Mean GPU utilisation and peak memory of GPU 0 while it runs, read from nvidia-smi."""

    def __init__(self, enabled: bool) -> None:
        self._enabled = enabled
        self._process: subprocess.Popen[str] | None = None
        self._samples: list[tuple[float, float]] = []
        self._reader: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        if self._enabled:
            self._process = subprocess.Popen(
                [
                    "nvidia-smi",
                    "--id=0",
                    "--query-gpu=utilization.gpu,memory.used",
                    "--format=csv,noheader,nounits",
                    "--loop-ms=200",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()
        return self

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            fields = [field.strip() for field in line.split(",")]
            if len(fields) == 2 and all(field.isdigit() for field in fields):
                self._samples.append((float(fields[0]), float(fields[1])))

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)
        if self._reader is not None:
            self._reader.join(10)

    def summary(self) -> dict[str, Any]:
        if not self._samples:
            return {"gpu_util_pct": None, "gpu_mem_mib": None}
        utilisation = [u for u, _ in self._samples]
        return {
            "gpu_util_pct": round(sum(utilisation) / len(utilisation), 1),
            "gpu_mem_mib": max(m for _, m in self._samples),
        }


def machine(gpus: int) -> dict[str, Any]:
    import torch

    facts: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpus": gpus,
    }
    if gpus:
        rows = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.splitlines()
        facts["gpu"] = rows
    java = java_version()
    if java:
        facts["java"] = java
    return facts


def java_version() -> str | None:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home, "bin", "java")) if home else shutil.which("java")
    if not java or not Path(java).exists():
        return None
    done = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    return done.stderr.splitlines()[0] if done.returncode == 0 and done.stderr else None


def torchserve_missing() -> str | None:
    """Why TorchServe cannot run here, or None."""
    try:
        import ts  # noqa: F401
    except ImportError:
        return "the torchserve package is not installed"
    if java_version() is None:
        return "no Java runtime (set JAVA_HOME or put java on PATH; TorchServe 0.12 needs 17)"
    return None


class Results:
    """results.json and table.md under the output folder, rewritten after every number."""

    def __init__(self, out: Path, document: dict[str, Any]) -> None:
        self.out = out
        self.document = document
        out.mkdir(parents=True, exist_ok=True)

    def save(self) -> None:
        (self.out / "results.json").write_text(json.dumps(self.document, indent=2))
        (self.out / "table.md").write_text(table(self.document) + "\n")


def table(document: dict[str, Any]) -> str:
    lines = [
        "| batch | server | workers | req/s | p50 ms | p99 ms | GPU util % | efficiency |",
        "|---|---|---|---|---|---|---|---|",
    ]
    limits = document.get("in_process", {})
    for key, row in document.get("served", {}).items():
        name, batch, workers = key.split("/")
        limit = limits.get(name, {}).get(batch)
        efficiency = f"{row['rps'] / limit['rps']:.0%}" if limit and limit["rps"] else ""
        lines.append(
            f"| {batch} | {name} | {workers} | {row['rps']} | {row['p50_ms']} | {row['p99_ms']} "
            f"| {row.get('gpu_util_pct')} | {efficiency} |"
        )
    for name, rows in limits.items():
        for batch, row in rows.items():
            lines.append(f"| {batch} | {name} handler in-process | - | {row['rps']} | | | | 100% |")
    return "\n".join(lines)


def run_checks(out: Path, gpus: int) -> dict[str, Any]:
    if not gpus:
        return {"skipped": "no NVIDIA GPU on this machine"}
    command = [sys.executable, "-m", "pytest", "--noconftest", "-p", "no:cacheprovider"]
    command += ["-q", "-rA", CHECKS]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=240)
    except subprocess.TimeoutExpired as expired:
        (out / "checks.log").write_text(str(expired.stdout or "") + str(expired.stderr or ""))
        print("correctness checks: timed out after 240 s", flush=True)
        return {"passed": False, "summary": "timed out after 240 s"}
    (out / "checks.log").write_text(done.stdout + done.stderr)
    summary = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    print(f"correctness checks: {summary}", flush=True)
    return {
        "passed": done.returncode == 0,
        "summary": summary,
        "seconds": round(time.perf_counter() - started, 1),
    }


def in_process(
    impl: str, model_dir: Path, batches: list[int], seconds: float, threads: int, gpu: int | None
) -> dict[str, dict[str, Any]]:
    command = [sys.executable, "-m", "e2e.bench.inprocess", "--impl", impl]
    command += ["--model-dir", str(model_dir), "--batch", *map(str, batches)]
    command += ["--seconds", str(seconds), "--threads", str(threads)]
    if gpu is not None:
        command += ["--gpu-id", str(gpu)]
    output = subprocess.run(command, check=True, capture_output=True, text=True, timeout=300).stdout
    rows = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return {str(row.pop("batch")): row for row in rows}


def load(
    server: RunningServer,
    model: str,
    body: Path,
    concurrency: int,
    args: argparse.Namespace,
    gpu: bool,
) -> dict[str, Any]:
    command = [sys.executable, "-m", "e2e.bench.loadgen"]
    command += ["--url", f"{server.url('inference')}/predictions/{model}"]
    command += ["--body-file", str(body), "--content-type", "image/jpeg"]
    command += ["--concurrency", str(concurrency), "--processes", str(args.loadgen_processes)]
    command += ["--duration", str(args.duration), "--warmup", str(args.warmup)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    time.sleep(args.warmup)
    with GpuSampler(gpu) as sampler:
        output, _ = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"loadgen failed against {server.name} {model}")
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return {**result, **sampler.summary()}


def save_metrics(server: RunningServer, path: Path) -> None:
    """The server's Prometheus metrics at the end (queue and handler times per model)."""
    try:
        path.write_text(httpx.get(f"{server.url('metrics')}/metrics", timeout=10).text)
    except httpx.HTTPError as error:
        path.write_text(f"metrics unavailable: {error}\n")


def keep_tail(log: Path, copy: Path, limit: int = 2 << 20) -> None:
    """The last `limit` bytes of a server's log (access logs make them long)."""
    if log.exists():
        with log.open("rb") as source:
            source.seek(max(0, log.stat().st_size - limit))
            copy.write_bytes(source.read())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="resnet50-gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results/resnet50-gpu"))
    parser.add_argument("--arch", default="resnet50", help="torchvision model (resnet18: quick)")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32, 1])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--servers", nargs="+", default=["marfleet", "torchserve"])
    parser.add_argument("--threads", type=int, default=4, help="torch threads per worker")
    parser.add_argument("--max-batch-delay", type=int, default=20, help="ms")
    parser.add_argument("--duration", type=float, default=6.0, help="counted seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--loadgen-processes", type=int, default=2)
    parser.add_argument("--depth", type=int, default=3, help="batches in flight per worker")
    parser.add_argument("--no-checks", action="store_true", help="skip the correctness tests")
    args = parser.parse_args(argv)
    gpus = installed_gpu_count()
    gpu = 0 if gpus else None
    results = Results(
        args.out,
        {
            "command": " ".join(["python -m e2e.bench.gpu", *argv]),
            "machine": machine(gpus),
            "settings": {k: str(v) for k, v in vars(args).items()},
            "in_process": {},
            "served": {},
        },
    )
    print(json.dumps(results.document["machine"]), flush=True)
    if not args.no_checks:
        results.document["checks"] = run_checks(args.out, gpus)
        results.save()
    servers = list(args.servers)
    missing = torchserve_missing() if "torchserve" in servers else None
    if missing:
        print(f"TorchServe left out: {missing}", flush=True)
        results.document["torchserve_left_out"] = missing
        servers.remove("torchserve")
    root = Path(tempfile.mkdtemp(prefix="marfleet-gpu-bench-"))
    store, work = root / "store", root / "work"
    store.mkdir()
    work.mkdir()
    started = time.perf_counter()
    mar = resnet_archive(store, work, args.arch)
    body = root / "image.jpg"
    body.write_bytes(jpeg_body())
    model_dir = load_archive(mar, root / "unpacked").model_dir
    print(f"archive {mar.name} in {time.perf_counter() - started:.1f} s", flush=True)
    running: dict[str, RunningServer] = {}
    failures: dict[str, str] = results.document.setdefault("failures", {})
    plan = [(b, w) for b in args.batches for w in args.workers]

    def ready(name: str) -> RunningServer:
        server = running[name] = start(name, store, root / name, args.threads)
        with ThreadPoolExecutor(len(plan)) as pool:
            for registration in [
                pool.submit(server.register, mar.name, f"r_b{b}_w{w}", b, args.max_batch_delay, w)
                for b, w in plan
            ]:
                registration.result()
        return server

    try:
        started = time.perf_counter()
        with ThreadPoolExecutor(len(servers)) as pool:
            futures = {name: pool.submit(ready, name) for name in servers}
            for name, future in futures.items():
                try:
                    future.result()
                except (RuntimeError, TimeoutError) as error:  # one server down, not the run
                    failures[name] = f"start or registration failed: {error}"
        servers = [name for name in servers if name not in failures]
        print(f"servers ready in {time.perf_counter() - started:.1f} s: {servers}", flush=True)
        for name in servers:
            try:
                limits = in_process(name, model_dir, args.batches, args.duration, args.threads, gpu)
            except subprocess.CalledProcessError as error:
                failures[f"{name} in-process"] = str(error.stderr)[-2000:]
                continue
            results.document["in_process"][name] = limits
            print(f"in-process {name}: {limits}", flush=True)
            results.save()
        for batch, workers in plan:
            concurrency = max(4, args.depth * batch * workers)
            for name in servers:
                model = f"r_b{batch}_w{workers}"
                try:
                    row = load(running[name], model, body, concurrency, args, gpu is not None)
                except RuntimeError as error:
                    failures[f"{name} {model}"] = str(error)
                    continue
                results.document["served"][f"{name}/{batch}/{workers}"] = row
                print(f"{name} batch {batch} workers {workers}: {json.dumps(row)}", flush=True)
                results.save()
    finally:
        results.save()
        for server in running.values():
            save_metrics(server, args.out / f"{server.name}-metrics.txt")
            server.stop()
            keep_tail(server.workdir / "server.log", args.out / f"{server.name}.log")
    print(table(results.document))
    if failures:
        print(f"failures: {json.dumps(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
