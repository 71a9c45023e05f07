"""A handler's throughput with no server at all: the denominator of serving efficiency.

Runs in its own process with as many torch threads as the servers' workers get (one unless
--threads says otherwise), on the GPU that --gpu-id names (the CPU without it), and calls the
handler back to back on batches of the benchmark's JPEG, the way each server's worker calls it:
`marfleet` through ModelService.handle, `torchserve` through TorchServe 0.12's own Context and
handler classes, `peer` through `peer_apps.Predictor` (the code KServe, Ray Serve and LitServe
run in the peer benchmark; CPU only). Prints {"batch": ..., "rps": ..., "cpu_us_per_request":
...} per batch size given, one line each, with the model loaded once.

    python -m e2e.bench.inprocess --impl marfleet --model-dir DIR --batch 8 --seconds 10
    python -m e2e.bench.inprocess --impl torchserve --model-dir DIR --batch 1 8 32 --gpu-id 0
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from e2e.bench.archives import jpeg_body

BatchRunner = Callable[[list[bytes]], object]


def marfleet_runner(model_dir: Path, batch: int, gpu_id: int | None) -> BatchRunner:
    from marfleet.runtime.handlers.service import InferenceRequest, ModelService

    service = ModelService.load(model_dir, gpu_id=gpu_id, batch_size=batch)

    def run(bodies: list[bytes]) -> object:
        requests = [
            InferenceRequest(str(i), body, "image/jpeg", {}, {}) for i, body in enumerate(bodies)
        ]
        return service.handle(requests)

    return run


def torchserve_runner(model_dir: Path, batch: int, gpu_id: int | None) -> BatchRunner:
    import ts
    from ts.context import Context, RequestProcessor
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

    # TorchServe's handlers report HandlerTime with dimensions its default metrics.yaml lacks
    logging.getLogger("ts.metrics").setLevel(logging.CRITICAL)
    manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
    metrics = MetricsCacheYamlImpl(str(Path(ts.__file__).parent / "configs" / "metrics.yaml"))
    metrics.initialize_cache()
    context = Context(
        manifest["model"]["modelName"],
        str(model_dir),
        manifest,
        batch,
        gpu_id,
        "0.12.0",
        metrics=metrics,
        model_yaml_config={},
    )
    module = importlib.import_module("ts.torch_handler." + manifest["model"]["handler"])
    handler = module.ImageClassifier()
    handler.initialize(context)
    context.request_processor = [RequestProcessor({"body": "image/jpeg"}) for _ in range(batch)]

    def run(bodies: list[bytes]) -> object:
        return handler.handle([{"body": body} for body in bodies], context)

    return run


def peer_runner(model_dir: Path, batch: int, gpu_id: int | None) -> BatchRunner:
    from e2e.bench.peer_apps import Predictor, Weights

    manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
    weights = model_dir / manifest["model"]["serializedFile"]
    predictor = Predictor("resnet", Weights(weights, weights))
    return predictor.predict


def measure(run: BatchRunner, batch: int, seconds: float) -> tuple[float, float]:
    """(requests per second, CPU microseconds per request) of back-to-back batches."""
    bodies = [jpeg_body()] * batch
    warm_until = time.perf_counter() + min(3.0, seconds / 3)
    while time.perf_counter() < warm_until:  # first calls pay for oneDNN/JIT set-up
        run(bodies)
    count = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        run(bodies)
        count += batch
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return count / wall, cpu / count * 1e6


RUNNERS = {"marfleet": marfleet_runner, "torchserve": torchserve_runner, "peer": peer_runner}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="inprocess", description=__doc__.splitlines()[0])
    parser.add_argument("--impl", choices=sorted(RUNNERS), required=True)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--batch", type=int, nargs="+", required=True)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, as each worker")
    parser.add_argument("--gpu-id", type=int, default=None, help="run on this GPU")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.chdir(args.model_dir)
    sys.path.insert(0, str(args.model_dir))
    factory = RUNNERS[args.impl]
    # the batch size only sizes the Context: one loaded model serves every batch size here
    run = factory(args.model_dir, max(args.batch), args.gpu_id)
    for batch in args.batch:
        rps, cpu = measure(run, batch, args.seconds)
        result = {"batch": batch, "rps": round(rps, 2), "cpu_us_per_request": round(cpu, 1)}
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
