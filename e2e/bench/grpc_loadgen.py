"""Closed-loop gRPC load generator: TorchServe's Predictions call, `concurrency` calls in flight.

The gRPC twin of `loadgen` (same output line, same `summarise`): one HTTP/2 channel per
`--channels` (default: one, as a typical client holds), `concurrency` coroutines each calling
`InferenceAPIsService/Predictions` back to back with the body as the `data` input, for
`duration` seconds after an uncounted `warmup`. Errors are counted by gRPC code name.

    python -m e2e.bench.grpc_loadgen --target 127.0.0.1:7070 --model mlp --body-file x.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import grpc
import uvloop
from marfleet.runtime.server.protos import inference_pb2

from e2e.bench.loadgen import Tally, summarise

METHOD = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions"


async def _caller(
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes],
    request: bytes,
    metadata: tuple[tuple[str, str], ...],
    tally: Tally,
    stop_at: float,
    errors: dict[str, int],
) -> None:
    while time.perf_counter() < stop_at:
        started = time.perf_counter()
        try:
            await call(request, metadata=metadata, timeout=60)
        except grpc.aio.AioRpcError as error:
            if tally.counting:
                errors[error.code().name] = errors.get(error.code().name, 0) + 1
            continue
        tally.answered += 1
        if tally.counting:
            tally.latencies.append(time.perf_counter() - started)


async def run(
    target: str,
    request: bytes,
    concurrency: int,
    channels: int,
    duration: float,
    warmup: float,
    metadata: tuple[tuple[str, str], ...] = (),
) -> tuple[Tally, float, dict[str, int]]:
    tally = Tally()
    errors: dict[str, int] = {}
    opened = [grpc.aio.insecure_channel(target) for _ in range(max(1, channels))]
    calls = [
        channel.unary_unary(
            METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        for channel in opened
    ]
    stop_at = time.perf_counter() + warmup + duration
    tasks = [
        asyncio.create_task(
            _caller(calls[i % len(calls)], request, metadata, tally, stop_at, errors)
        )
        for i in range(concurrency)
    ]
    await asyncio.sleep(warmup)
    tally.counting = True
    started = time.perf_counter()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    for channel in opened:
        await channel.close()
    return tally, elapsed, errors


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="grpc_loadgen", description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="host:port of the gRPC inference port")
    parser.add_argument("--model", required=True)
    parser.add_argument("--body-file", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--header", action="append", default=[], help="metadata 'Name: value'")
    args = parser.parse_args(argv)
    metadata = tuple(
        (name.strip().lower(), value.strip())
        for name, value in (header.split(":", 1) for header in args.header)
    )
    request = inference_pb2.PredictionsRequest(
        model_name=args.model, input={"data": args.body_file.read_bytes()}
    ).SerializeToString()
    tally, elapsed, errors = uvloop.run(
        run(
            args.target,
            request,
            args.concurrency,
            args.channels,
            args.duration,
            args.warmup,
            metadata,
        )
    )
    result = summarise([(tally, elapsed)], args.concurrency)
    result["errors"] = errors
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
