"""The soak check: valid traffic plus abuse against one `marfleet serve`, for minutes.

    python -m e2e.bench.soak --duration 300 --out bench-results/soak.json   (make soak)

One server (loopback, its own TMPDIR, short head/body timeouts so abusive connections cycle)
serves a JSON echo model. First a quiet phase measures the p99 of valid predictions alone; then,
for `--duration` seconds, the same valid traffic runs next to four kinds of abuse:

- slowloris: connections that send a header byte now and then and never finish their head;
- oversized heads: one header line far past the head limit (each must get 431);
- half-sent bodies: a Content-Length of 1 MB, 10 KB sent, then silence;
- bad archives: an archive whose handler cannot load (500) and bytes that are no archive (400)
  registered in a loop, and a good model registered and unregistered;
- on the gRPC inference port: connections that never speak (closed by the head timeout),
  connections that open HTTP/2 and make no call (closed by the idle timeout), bursts of
  connections past `max_connections` (the ones over it closed at once) and messages over
  `max_request_size` (RESOURCE_EXHAUSTED).

Valid traffic is HTTP and gRPC: the gRPC client keeps its one connection busy, as a real one
does, and must not lose a call to the abuse on its port. With `--through-router` the traffic
and the abuse go to a `marfleet router` before the server (its flags the server's limits), and
the checks are the router's.

Then the abuse stops and the server is given a moment to drop what it held. The run passes when
valid traffic had 0 failures and a p99 within 2x its quiet value, the server's resident memory
stopped growing (its peak in the second half of the abuse, and its value at the end, within
10 % of its peak in the first half), its open file descriptors are within 10 % of where they
were after the quiet phase, and its TMPDIR holds nothing more than it did then. Every number
is written to `--out`; the exit code is 1 when a check failed.
`tests/integration/test_soak_smoke.py` runs a few seconds of it in the suite so it cannot rot;
the five-minute run is `make soak`, not part of `make test`.
"""

from __future__ import annotations

import argparse
import errno
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import httpx
import psutil
from marfleet.operator.render import ROUTER_FOLLOWS
from marfleet.runtime.server.protos import inference_pb2 as ts_pb2

from e2e import h2raw
from e2e.bench.router_procs import router
from e2e.bench.servers import RunningServer, start
from e2e.support import archiver_command, free_port

ECHO = """
def handle(data, context):
    if data is None:
        return None
    answers = []
    for row in data:
        body = row.get("body")
        if isinstance(body, dict) and "pad" in body:  # {"pad": N}: an answer of N bytes
            body = "x" * int(body["pad"])
        answers.append(body)
    return answers
"""
CANNOT_LOAD = """
raise RuntimeError("this model cannot load")
"""
MAX_CONNECTIONS = 400
LIMITS = {
    "request_head_timeout_seconds": "2",
    "request_body_timeout_seconds": "2",
    "keepalive_timeout_seconds": "10",
    "max_request_head_size": "65536",
    "grpc_keepalive_seconds": "2",
    # past the run: a reconnect during a burst at the connection cap would be refused
    "grpc_max_connection_age_seconds": "3600",
    "max_request_size": "2000000",  # over the half-sent bodies' 1 MB, under grpc_oversized
}
"""The server's keys; a router before it takes the same as flags (the operator's mapping)."""
SERVER_SETTINGS = [
    *(f"{key}={value}" for key, value in LIMITS.items()),
    f"max_connections={MAX_CONNECTIONS}",
]
SLOWLORIS_CONNECTIONS = 40
HALF_BODIES = 10
UNREAD = 2  # connections at a time that ask for twenty 500 KB answers and read none
VALID_CLIENTS = 2
GRPC_SILENT = 30
GRPC_IDLE = 10
GRPC_STALLED = 20
PREDICTIONS = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions"


@dataclass
class Result:
    duration_s: float
    through_router: bool = False
    quiet_requests: int = 0
    quiet_p99_ms: float = 0.0
    valid_requests: int = 0
    valid_failures: int = 0
    failure_examples: list[str] = field(default_factory=list)
    mixed_p99_ms: float = 0.0
    p99_ratio: float = 0.0
    abuse: dict[str, int] = field(default_factory=dict)
    rss_start_mib: float = 0.0
    rss_first_half_peak_mib: float = 0.0  # sampled every second during the abuse
    rss_second_half_peak_mib: float = 0.0
    rss_end_mib: float = 0.0
    fds_start: int = 0
    fds_end: int = 0
    tmp_entries_start: int = 0
    tmp_entries_end: int = 0
    checks: dict[str, bool] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(self.checks.values())


@dataclass(frozen=True)
class Front:
    """What the clients and the abuse aim at, and the process measured: the server itself, or
    a `marfleet router` before it (`--through-router`)."""

    http_port: int
    grpc_port: int
    pid: int


@contextmanager
def router_before(server: RunningServer) -> Iterator[Front]:
    """A `marfleet router` before `server` (HTTP and gRPC), with the server's limits as flags."""
    grpc_port = free_port()
    flags = [
        *("--weights", "stable=100", "--grpc-port", str(grpc_port)),
        f"--grpc-backend=stable=127.0.0.1:{server.ports['grpc']}",
        *("--max-connections", str(MAX_CONNECTIONS)),
        *(part for key, flag in ROUTER_FOLLOWS if key in LIMITS for part in (flag, LIMITS[key])),
    ]
    with router({"stable": server.url("inference")}, *flags) as proc:
        yield Front(proc.port, grpc_port, proc.process.pid)


def build_store(root: Path) -> Path:
    store = root / "store"
    store.mkdir(parents=True)
    for name, source in (("echo", ECHO), ("cannotload", CANNOT_LOAD)):
        handler = root / f"{name}_handler.py"
        handler.write_text(source)
        flags = ["--model-name", name, "--version", "1.0", "--handler", str(handler)]
        subprocess.run(
            [*archiver_command(), *flags, "--export-path", str(store), "--force"],
            check=True,
            capture_output=True,
            timeout=300,
        )
    (store / "broken.mar").write_bytes(b"no archive at all " * 64)
    return store


class Valid:
    """Clients posting small JSON predictions in a loop; every non-200 is a failure."""

    def __init__(self, front: Front) -> None:
        self.url = f"http://127.0.0.1:{front.http_port}/predictions/echo"
        self.grpc = f"127.0.0.1:{front.grpc_port}"
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.lock = threading.Lock()

    def run(self, stop: threading.Event) -> None:
        with httpx.Client(timeout=30) as client:
            n = 0
            while not stop.is_set():
                n += 1
                started = time.perf_counter()
                try:
                    response = client.post(self.url, json={"n": n})
                    ok = response.status_code == 200 and response.json() == {"n": n}
                    problem = "" if ok else f"{response.status_code} {response.text[:200]}"
                except httpx.HTTPError as error:
                    problem = f"{type(error).__name__}: {error}"
                self._record(problem, time.perf_counter() - started)
                time.sleep(0.01)

    def run_grpc(self, stop: threading.Event) -> None:
        """TorchServe's gRPC Predictions on the same model, one channel, in a loop."""
        with grpc.insecure_channel(self.grpc) as channel:
            predict = channel.unary_unary(
                PREDICTIONS,
                request_serializer=ts_pb2.PredictionsRequest.SerializeToString,
                response_deserializer=ts_pb2.PredictionResponse.FromString,
            )
            n = 0
            while not stop.is_set():
                n += 1
                body = json.dumps({"n": n}).encode()
                started = time.perf_counter()
                try:
                    answer = predict(
                        ts_pb2.PredictionsRequest(model_name="echo", input={"body": body}),
                        timeout=30,
                    )
                    problem = "" if answer.prediction == body else f"gRPC answer {answer!r:.200}"
                except grpc.RpcError as error:
                    problem = f"gRPC {error.code()}: {error.details()}"
                self._record(problem, time.perf_counter() - started)
                time.sleep(0.01)

    def _record(self, problem: str, elapsed: float) -> None:
        with self.lock:
            if problem:
                self.failures.append(problem)
            else:
                self.latencies.append(elapsed)

    def take(self) -> tuple[list[float], list[str]]:
        with self.lock:
            latencies, failures = self.latencies, self.failures
            self.latencies, self.failures = [], []
        return latencies, failures


class Abuse:
    def __init__(self, front: Front, management: str, *, good_model_cycle: bool = True) -> None:
        self.good_model_cycle = good_model_cycle
        self.port = front.http_port
        self.grpc_port = front.grpc_port
        self.management = management  # the server's, also through a router
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()

    def count(self, what: str) -> None:
        with self.lock:
            self.counts[what] += 1

    def _connect(self, port: int | None = None) -> socket.socket:
        return socket.create_connection(("127.0.0.1", port or self.port), timeout=10)

    def slowloris(self, stop: threading.Event) -> None:
        """Heads that never end: a header byte every half second (the head timeout's 408)."""
        head = b"GET /ping HTTP/1.1\r\nHost: x\r\n"
        self._hold(
            stop,
            "slowloris",
            SLOWLORIS_CONNECTIONS,
            self.port,
            head,
            poke=b"X",
            every=0.5,
            closed="timed_out",
        )

    def oversized_heads(self, stop: threading.Event) -> None:
        while not stop.is_set():
            with self._connect() as sock:
                with suppress(OSError):
                    sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000)
                with suppress(OSError):
                    answer = sock.recv(64)
                    self.count("head_431" if answer.startswith(b"HTTP/1.1 431") else "head_other")
            stop.wait(0.2)

    def half_bodies(self, stop: threading.Event) -> None:
        def one() -> None:
            with self._connect() as sock:
                sock.sendall(
                    b"POST /predictions/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                    b"\r\nContent-Length: 1000000\r\n\r\n" + b" " * 10_000
                )
                with suppress(OSError):
                    answer = sock.recv(64)
                    self.count("body_408" if answer.startswith(b"HTTP/1.1 408") else "body_other")

        threads: list[threading.Thread] = []
        while not stop.is_set():
            threads = [t for t in threads if t.is_alive()]
            while len(threads) < HALF_BODIES:
                thread = threading.Thread(target=one, daemon=True)
                thread.start()
                threads.append(thread)
            stop.wait(0.2)
        for thread in threads:
            thread.join(15)

    def unread_answers(self, stop: threading.Event) -> None:
        """Pipelined requests for large answers, none read: the server answers what the socket
        buffers take, serves no more, and resets the connection once nothing was read for the
        body timeout; the kernel here keeps little (a small receive buffer)."""
        limit = float(LIMITS["request_body_timeout_seconds"])
        body = json.dumps({"pad": 500_000}).encode()
        request = (
            b"POST /predictions/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
        )

        def one() -> None:
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.settimeout(10)
                sock.connect(("127.0.0.1", self.port))
                with suppress(OSError):
                    sock.sendall(request * 20)
                deadline = time.monotonic() + limit + 10
                while time.monotonic() < deadline:
                    # the reset, seen without reading (queued data would come before it)
                    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if error:
                        reset = error == errno.ECONNRESET
                        self.count("unread_reset" if reset else "unread_other")
                        return
                    time.sleep(0.25)
                self.count("unread_other")

        while not stop.is_set():
            threads = [threading.Thread(target=one, daemon=True) for _ in range(UNREAD)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

    def bad_archives(self, stop: threading.Event) -> None:
        cycle = 0
        with httpx.Client(base_url=self.management, timeout=120) as client:
            while not stop.is_set():
                cycle += 1
                cannot = client.post(
                    "/models", params={"url": "cannotload.mar", "initial_workers": 1}
                )
                self.count("cannotload_500" if cannot.status_code == 500 else "cannotload_other")
                broken = client.post("/models", params={"url": "broken.mar"})
                self.count("broken_400" if broken.status_code == 400 else "broken_other")
                if not self.good_model_cycle:
                    stop.wait(1)
                    continue
                name = f"soak{cycle}"
                added = client.post(
                    "/models", params={"url": "echo.mar", "model_name": name, "initial_workers": 1}
                )
                removed = client.delete(f"/models/{name}")
                ok = added.status_code == 200 and removed.status_code == 200
                self.count("register_remove_ok" if ok else "register_remove_other")
                stop.wait(3)

    def _hold(
        self,
        stop: threading.Event,
        kind: str,
        count: int,
        port: int,
        first: bytes,
        *,
        poke: bytes = b"",
        every: float = 0.25,
        closed: str = "closed",
    ) -> None:
        """`count` connections to `port` at a time that send `first`, then `poke` (if any)
        every `every` seconds; each is counted as `<kind>_opened`, and once the server closes
        it as `<kind>_<closed>`, and replaced."""
        sockets: list[socket.socket] = []
        try:
            while not stop.is_set():
                while len(sockets) < count:
                    sock = self._connect(port)
                    if first:
                        with suppress(OSError):
                            sock.sendall(first)
                    sock.setblocking(False)
                    sockets.append(sock)
                    self.count(f"{kind}_opened")
                for sock in list(sockets):
                    poked = True
                    if poke:
                        try:
                            sock.send(poke)
                        except BlockingIOError:
                            pass
                        except OSError:
                            poked = False
                    if not poked or _closed_by_peer(sock):
                        self.count(f"{kind}_{closed}")
                        sockets.remove(sock)
                        sock.close()
                stop.wait(every)
        finally:
            for sock in sockets:
                sock.close()

    def grpc_silent(self, stop: threading.Event) -> None:
        self._hold(stop, "grpc_silent", GRPC_SILENT, self.grpc_port, b"")

    def grpc_idle(self, stop: threading.Event) -> None:
        self._hold(stop, "grpc_idle", GRPC_IDLE, self.grpc_port, h2raw.PREFACE)

    def grpc_over_cap(self, stop: threading.Event) -> None:
        """Bursts of connections until the port closes new ones at once, then let go."""
        stop.wait(1)  # after the other gRPC clients have their connections
        while not stop.is_set():
            sockets: list[socket.socket] = []
            try:
                for _ in range(MAX_CONNECTIONS + 50):
                    sock = self._connect(self.grpc_port)
                    sock.sendall(h2raw.PREFACE)
                    sockets.append(sock)
                stop.wait(0.5)
                refused = 0
                for sock in sockets:
                    sock.setblocking(False)
                    refused += _closed_by_peer(sock)
                self.count("grpc_over_cap_closed" if refused else "grpc_over_cap_other")
            finally:
                for sock in sockets:
                    sock.close()
            stop.wait(2)

    def grpc_stalled(self, stop: threading.Event) -> None:
        """Rounds of calls whose request message never comes (the client answers pings): each
        must end DEADLINE_EXCEEDED after request_body_timeout_seconds."""
        limit = float(LIMITS["request_body_timeout_seconds"])
        with grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}") as channel:
            predict = channel.stream_unary(PREDICTIONS)
            while not stop.is_set():
                round_over = threading.Event()
                calls = [
                    predict.future(_waits_for(round_over), timeout=limit + 30)
                    for _ in range(GRPC_STALLED)
                ]
                for call in calls:
                    error = call.exception()
                    ended = error is not None and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                    self.count("grpc_stalled_ended" if ended else "grpc_stalled_other")
                round_over.set()  # lets the requests' sending threads go

    def grpc_oversized(self, stop: threading.Event) -> None:
        request = ts_pb2.PredictionsRequest(model_name="echo", input={"body": bytes(2_500_000)})
        with grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}") as channel:
            predict = channel.unary_unary(PREDICTIONS)
            while not stop.is_set():
                try:
                    predict(request.SerializeToString(), timeout=30)
                    self.count("grpc_oversized_other")
                except grpc.RpcError as error:
                    exhausted = error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    self.count("grpc_oversized_refused" if exhausted else "grpc_oversized_other")
                stop.wait(0.2)


def _waits_for(event: threading.Event) -> Iterator[bytes]:
    """A request stream that sends nothing until `event` is set."""
    event.wait()
    return
    yield b""


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether the server closed a non-blocking `sock` (what it sent before is dropped)."""
    try:
        while True:
            if not sock.recv(65536):
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def p99_ms(latencies: list[float]) -> float:
    if len(latencies) < 2:
        return 0.0
    return statistics.quantiles(latencies, n=100)[98] * 1000


def measure(pid: int) -> tuple[float, int]:
    process = psutil.Process(pid)
    return process.memory_info().rss / (1 << 20), process.num_fds()


def rss_peaks(pid: int, duration: float) -> tuple[float, float]:
    """The process's highest resident memory in the first and in the second half of the next
    `duration` seconds, MiB, sampled every second."""
    peaks = [0.0, 0.0]
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < duration:
        half = 0 if elapsed < duration / 2 else 1
        peaks[half] = max(peaks[half], measure(pid)[0])
        time.sleep(min(1.0, max(0.0, duration - elapsed)))
    return peaks[0], peaks[1] or peaks[0]


def tmp_entries(tmp: Path) -> int:
    return sum(1 for _ in tmp.rglob("*"))


def run(
    duration: float,
    quiet: float,
    workdir: Path,
    *,
    settle: float = 6.0,
    good_model_cycle: bool = True,
    through_router: bool = False,
) -> Result:
    """Soak one server for `duration` s after `quiet` s of valid traffic alone; with
    `good_model_cycle` the archive loop also registers and removes a model that loads; with
    `through_router`, traffic and abuse go to a `marfleet router` before the server (the same
    limits as flags), whose memory and descriptors are the ones checked."""
    result = Result(duration_s=duration, through_router=through_router)
    store = build_store(workdir)
    tmp = workdir / "tmp"
    tmp.mkdir()
    server = start(
        "marfleet", store, workdir / "server", extra=SERVER_SETTINGS, env={"TMPDIR": str(tmp)}
    )
    stack = ExitStack()
    try:
        server.register("echo.mar", "echo", batch_size=1, max_batch_delay=1)
        front = Front(server.ports["inference"], server.ports["grpc"], server.process.pid)
        if through_router:
            front = stack.enter_context(router_before(server))
        valid = Valid(front)
        stop_valid = threading.Event()
        clients = [
            threading.Thread(target=target, args=(stop_valid,), daemon=True)
            for target in [*[valid.run] * VALID_CLIENTS, valid.run_grpc]
        ]
        for thread in clients:
            thread.start()
        time.sleep(quiet)
        latencies, failures = valid.take()
        result.quiet_requests = len(latencies)
        result.quiet_p99_ms = p99_ms(latencies)
        result.valid_failures += len(failures)
        result.failure_examples += failures[:5]
        result.rss_start_mib, result.fds_start = measure(front.pid)
        result.tmp_entries_start = tmp_entries(tmp)

        abuse = Abuse(front, server.url("management"), good_model_cycle=good_model_cycle)
        stop_abuse = threading.Event()
        kinds: list[Callable[[threading.Event], None]] = [
            abuse.slowloris,
            abuse.oversized_heads,
            abuse.half_bodies,
            abuse.unread_answers,
            abuse.bad_archives,
            abuse.grpc_silent,
            abuse.grpc_idle,
            abuse.grpc_over_cap,
            abuse.grpc_oversized,
            abuse.grpc_stalled,
        ]
        attackers = [
            threading.Thread(target=kind, args=(stop_abuse,), daemon=True) for kind in kinds
        ]
        for thread in attackers:
            thread.start()
        halves = rss_peaks(front.pid, duration)
        result.rss_first_half_peak_mib, result.rss_second_half_peak_mib = halves
        latencies, failures = valid.take()
        stop_abuse.set()
        stop_valid.set()
        for thread in [*attackers, *clients]:
            thread.join(60)
        result.valid_requests = len(latencies)
        result.valid_failures += len(failures)
        result.failure_examples += failures[:5]
        result.mixed_p99_ms = p99_ms(latencies)
        result.p99_ratio = result.mixed_p99_ms / max(result.quiet_p99_ms, 1e-9)
        result.abuse = dict(abuse.counts)
        time.sleep(settle)  # head/body timeouts (2 s) and lingering closes let go
        result.rss_end_mib, result.fds_end = measure(front.pid)
        result.tmp_entries_end = tmp_entries(tmp)
    finally:
        stack.close()
        server.stop()
    result.checks = {
        "no_failures": result.valid_failures == 0,
        "p99_within_2x": result.p99_ratio <= 2.0,
        # the server's memory stops growing: a leak grows through the whole run, while the
        # allocator keeps what the first connection bursts made it take (docs/operations.md)
        "rss_steady": max(result.rss_second_half_peak_mib, result.rss_end_mib)
        <= result.rss_first_half_peak_mib * 1.10,
        "fds_within_10pct": result.fds_end <= result.fds_start * 1.10,
        "tmp_clean": result.tmp_entries_end <= result.tmp_entries_start,
        "abuse_answered": all(not key.endswith("_other") for key in result.abuse),
    }
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.bench.soak", description=__doc__)
    parser.add_argument("--duration", type=float, default=300, help="seconds of abuse")
    parser.add_argument("--quiet", type=float, default=20, help="seconds of quiet baseline")
    parser.add_argument("--out", type=Path, default=Path("bench-results/soak.json"))
    parser.add_argument(
        "--through-router",
        action="store_true",
        help="aim traffic and abuse at a marfleet router before the server, and check it",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="marfleet-soak-") as root:
        result = run(args.duration, args.quiet, Path(root), through_router=args.through_router)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**asdict(result), "passed": result.passed}, indent=2) + "\n")
    print(json.dumps({**asdict(result), "passed": result.passed}, indent=2))
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
