"""Steady prediction traffic from inside the real node's network namespace, and its record.

The generator is its own process (`python -m e2e.scenario.load`), started under
`ip netns exec` so that a Service's ClusterIP works exactly as it does for a pod: kube-proxy's
rules live in that namespace. It is open-loop (requests leave at a fixed rate whether or not
earlier ones have answered), opens a new connection per request so kube-proxy spreads them
over the Service's endpoints as it would spread many clients, and appends one JSON line per
request to its record file. The scenario reads the record while it runs (`Record`) to judge
windows of time: how many failed, which variant and model version answered.
"""

from __future__ import annotations

import argparse
import http.client
import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

from e2e.support import Started, terminate

BODY = json.dumps({"features": [5.1, 3.5, 1.4, 0.2]}).encode()
JSON = "application/json"
TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class Outcome:
    at: float  # wall-clock time the request left
    status: int  # 0 when no HTTP answer came back
    seconds: float
    variant: str
    version: str
    error: str
    answer: str = ""  # the body of a 200, kept by one-shot probes only

    @property
    def ok(self) -> bool:
        return self.status == 200


def _one(
    host: str,
    port: int,
    path: str,
    body: bytes = BODY,
    content_type: str = JSON,
    keep_answer: bool = False,
) -> Outcome:
    started = time.time()
    clock = time.monotonic()
    connection = http.client.HTTPConnection(host, port, timeout=TIMEOUT_SECONDS)
    try:
        connection.request("POST", path, body, {"Content-Type": content_type})
        response = connection.getresponse()
        answer = response.read()
        version = ""
        if response.status == 200:
            document = json.loads(answer)
            if isinstance(document, dict):
                version = str(document.get("model_version", ""))
        return Outcome(
            started,
            response.status,
            time.monotonic() - clock,
            response.getheader("x-marfleet-variant", ""),
            version,
            "" if response.status == 200 else answer[:200].decode(errors="replace"),
            answer.decode(errors="replace") if keep_answer and response.status == 200 else "",
        )
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return Outcome(started, 0, time.monotonic() - clock, "", "", f"{type(exc).__name__}: {exc}")
    finally:
        connection.close()


PREDICTIONS = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions"


def _one_grpc(target: str, model: str) -> Outcome:
    """One TorchServe gRPC Predictions call (the same body as the `data` input)."""
    import grpc
    from marfleet.runtime.server.protos import inference_pb2

    started = time.time()
    clock = time.monotonic()
    request = inference_pb2.PredictionsRequest(model_name=model, input={"data": BODY})
    with grpc.insecure_channel(target) as channel:
        predict = channel.unary_unary(
            PREDICTIONS,
            request_serializer=inference_pb2.PredictionsRequest.SerializeToString,
            response_deserializer=inference_pb2.PredictionResponse.FromString,
        )
        try:
            reply, call = predict.with_call(request, timeout=TIMEOUT_SECONDS)
        except grpc.RpcError as exc:
            return Outcome(
                started, 0, time.monotonic() - clock, "", "", f"{exc.code()}: {exc.details()}"
            )
    variant = dict(call.initial_metadata() or ()).get("x-marfleet-variant", "")
    answer = json.loads(reply.prediction)
    version = str(answer.get("model_version", "")) if isinstance(answer, dict) else ""
    return Outcome(started, 200, time.monotonic() - clock, str(variant), version, "")


def generate(url: str, rate: float, record: Path, workers: int = 32) -> None:
    """Send POSTs to `url` at `rate` per second until SIGTERM, recording each outcome."""
    parts = urlsplit(url)
    host, port, path = parts.hostname or "", parts.port or 80, parts.path
    stop = threading.Event()
    tickets: queue.Queue[bool] = queue.Queue()
    lock = threading.Lock()

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    with record.open("a", buffering=1) as out:

        def work() -> None:
            while tickets.get():
                outcome = _one(host, port, path)
                with lock:
                    out.write(json.dumps(outcome.__dict__) + "\n")

        threads = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
        for thread in threads:
            thread.start()
        interval, due = 1.0 / rate, time.monotonic()
        while not stop.is_set():
            tickets.put(True)
            due += interval
            stop.wait(max(0.0, due - time.monotonic()))
        for _ in threads:
            tickets.put(False)
        for thread in threads:
            thread.join(TIMEOUT_SECONDS + 1)


class Record:
    """The outcomes written so far; `since`/`between` pick a window by send time."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def outcomes(self) -> list[Outcome]:
        if not self.path.exists():
            return []
        lines = self.path.read_text().splitlines()
        return [Outcome(**json.loads(line)) for line in lines if line.endswith("}")]

    def between(self, start: float, end: float = float("inf")) -> list[Outcome]:
        return [o for o in self.outcomes() if start <= o.at < end]


@dataclass(frozen=True)
class Summary:
    requests: int
    failed: int
    variants: Counter[str]
    versions: Counter[str]
    errors: Counter[str]
    p99_ms: float

    @classmethod
    def of(cls, outcomes: Sequence[Outcome]) -> Summary:
        latencies = sorted(o.seconds for o in outcomes if o.ok)
        p99 = latencies[int(0.99 * (len(latencies) - 1))] * 1000 if latencies else 0.0
        return cls(
            requests=len(outcomes),
            failed=sum(not o.ok for o in outcomes),
            variants=Counter(o.variant for o in outcomes if o.ok),
            versions=Counter(o.version for o in outcomes if o.ok),
            errors=Counter(
                f"{o.status} {' '.join(o.error.split())[:200]}" for o in outcomes if not o.ok
            ),
            p99_ms=p99,
        )

    def describe(self) -> str:
        text = f"{self.requests} requests, {self.failed} failed, p99 {self.p99_ms:.0f} ms"
        if self.versions:
            text += ", model versions " + ", ".join(
                f"{v}: {n}" for v, n in sorted(self.versions.items())
            )
        if self.errors:
            text += "; errors: " + "; ".join(f"{e} x{n}" for e, n in self.errors.most_common(3))
        return text


def probe(netns: str, url: str, body: Path | None = None, content_type: str = JSON) -> Outcome:
    """One prediction from inside the network namespace (of the file `body`, else the iris
    row); its outcome, with the answer."""
    command = [sys.executable, "-m", "e2e.scenario.load", url, "0", "-"]
    if body is not None:
        command += ["--body", str(body), "--content-type", content_type]
    result = subprocess.run(
        ["ip", "netns", "exec", netns, *command], capture_output=True, text=True, timeout=30
    )
    if result.returncode != 0:
        raise RuntimeError(f"the probe failed to run: {result.stderr.strip()[-500:]}")
    return Outcome(**json.loads(result.stdout))


class Load(Started):
    """The generator as a child process in a network namespace, writing to `record`."""

    def __init__(self, netns: str, url: str, rate: float, record: Path) -> None:
        self.netns, self.url, self.rate = netns, url, rate
        self.record = Record(record)
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "e2e.scenario.load", self.url, str(self.rate)]
        command.append(str(self.record.path))
        self._process = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, *command], stderr=subprocess.PIPE
        )

    def check(self) -> None:
        """Raise if the generator died (its own failure, not the service's)."""
        if self._process is not None and self._process.poll() is not None:
            stderr = self._process.stderr.read().decode() if self._process.stderr else ""
            raise RuntimeError(
                f"the load generator exited with {self._process.returncode}: {stderr}"
            )

    def stop(self) -> None:
        if self._process is not None:
            terminate(self._process, grace=TIMEOUT_SECONDS + 2)
            self._process = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.scenario.load", description=__doc__)
    parser.add_argument(
        "url", help="http://host[:port]/predictions/<model>, or grpc://host:port/<model> (one call)"
    )
    parser.add_argument("rate", type=float, help="requests per second; 0: one request")
    parser.add_argument("record", help="file to append one JSON line per request to; - stdout")
    parser.add_argument("--body", type=Path, help="one request only: send this file's bytes")
    parser.add_argument("--content-type", default=JSON, help="of --body (default: JSON)")
    args = parser.parse_args(argv)
    if args.rate <= 0:
        parts = urlsplit(args.url)
        if parts.scheme == "grpc":
            outcome = _one_grpc(parts.netloc, parts.path.strip("/"))
        else:
            body = args.body.read_bytes() if args.body else BODY
            address = (parts.hostname or "", parts.port or 80, parts.path)
            outcome = _one(*address, body, args.content_type, keep_answer=True)
        print(json.dumps(outcome.__dict__))
        return 0
    generate(args.url, args.rate, Path(args.record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
