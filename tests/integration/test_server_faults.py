"""Overload and failure, caused for real: full queues, killed and stuck workers, vanished
clients, SIGTERM. Nothing is faked — workers are SIGKILLed, handlers really sleep.

`slow` has one worker, batch size 1, a queue of 2 and a 3 s response timeout; `victim` has one
worker; both run the `behaviour` test handler, which reports its pid and counts the rows it
processes (RowsProcessed, exported as model_metrics_auto_detect=true lets TorchServe).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest
from marfleet.runtime.server.protos import inference_pb2 as ts_pb2

from e2e.bench.router_procs import open_file_limits, router
from e2e.support import free_port
from tests.integration.server_archives import build_store
from tests.serving import Server, serve

WORKER_DIED = {"code": 500, "type": "InternalServerException", "message": "Worker died."}
PROPERTIES = {
    "disable_token_authorization": "true",
    "worker_threads": "1",
    "model_metrics_auto_detect": "true",
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_store(tmp_path_factory.mktemp("server-faults"))


@pytest.fixture(scope="module")
def server(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("run")
    with serve(
        store, workdir, models=["slow.mar", "victim.mar", "echo.mar"], properties=PROPERTIES
    ) as srv:
        yield srv


def post(server: Server, model: str, body: object, timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{server.inference}/predictions/{model}", json=body, timeout=timeout)


def in_background(
    pool: ThreadPoolExecutor, server: Server, model: str, body: object
) -> Future[httpx.Response]:
    return pool.submit(post, server, model, body)


def worker_pid(server: Server, model: str) -> int:
    (described,) = httpx.get(f"{server.management}/models/{model}").json()
    (worker,) = described["workers"]
    pid: int = worker["pid"]
    return pid


def rows_processed(server: Server, model: str) -> float:
    for line in httpx.get(f"{server.metrics}/metrics").text.splitlines():
        if line.startswith("RowsProcessed{") and f'ModelName="{model}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def metric_line(server: Server, prefix: str) -> str:
    text = httpx.get(f"{server.metrics}/metrics").text
    return "\n".join(line for line in text.splitlines() if line.startswith(prefix))


def wait_healthy(server: Server, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while httpx.get(f"{server.inference}/ping").status_code != 200:
        assert time.monotonic() < deadline, "the server never became healthy again"
        time.sleep(0.1)


def test_full_queue_gives_503_with_retry_after(server: Server) -> None:
    with ThreadPoolExecutor(4) as pool:
        busy = in_background(pool, server, "slow", {"sleep": 1.5})
        time.sleep(0.5)  # the worker has it; the queue (2) is empty
        queued = [in_background(pool, server, "slow", {"n": n}) for n in range(2)]
        time.sleep(0.3)
        refused = post(server, "slow", {"n": "over"})
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["type"] == "ServiceUnavailableException"
        assert "job_queue_size" in refused.json()["message"]
        assert [f.result().status_code for f in (busy, *queued)] == [200, 200, 200]
    assert 'model="slow"' in metric_line(server, "marfleet_queue_rejections_total")


def test_client_that_hung_up_is_dropped_before_inference(server: Server) -> None:
    before = rows_processed(server, "slow")
    with ThreadPoolExecutor(1) as pool:
        busy = in_background(pool, server, "slow", {"sleep": 1.0})
        time.sleep(0.4)
        body = b'{"gone": true}'
        with socket.create_connection(("127.0.0.1", server.ports["inference"])) as sock:
            sock.sendall(
                b"POST /predictions/slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            time.sleep(0.2)  # queued behind the busy worker; now the client leaves
        assert busy.result().status_code == 200
    time.sleep(0.5)
    assert rows_processed(server, "slow") - before == 1  # only the request that stayed


def test_grpc_call_past_its_deadline_is_dropped_before_inference(server: Server) -> None:
    """The same over gRPC: a call whose deadline passes while it waits is cancelled by the
    client's library, and the queued job goes with it."""
    request = ts_pb2.PredictionsRequest(model_name="slow", input={"body": b'{"gone": true}'})
    before = rows_processed(server, "slow")
    with ThreadPoolExecutor(1) as pool, grpc.insecure_channel(server.grpc) as channel:
        predict = channel.unary_unary(
            "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions"
        )
        busy = in_background(pool, server, "slow", {"sleep": 1.0})
        time.sleep(0.4)
        with pytest.raises(grpc.RpcError) as gone:
            predict(request.SerializeToString(), timeout=0.2)  # queued behind the busy worker
        assert gone.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert busy.result().status_code == 200
    time.sleep(0.5)
    assert rows_processed(server, "slow") - before == 1  # only the request that stayed


def test_clients_that_leave_through_the_router_are_dropped_before_inference(
    server: Server,
) -> None:
    """The same through `marfleet router` (HTTP and gRPC): a client that leaves takes its
    request off the variant's queue too, so the model never computes an answer nobody reads."""
    request = ts_pb2.PredictionsRequest(model_name="slow", input={"body": b'{"gone": true}'})
    grpc_port = free_port()
    args = ["--weights", "stable=100", "--grpc-port", str(grpc_port)]
    with router(
        {"stable": server.inference}, *args, f"--grpc-backend=stable={server.grpc}"
    ) as front:
        before = rows_processed(server, "slow")
        with ThreadPoolExecutor(1) as pool, grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
            busy = in_background(pool, server, "slow", {"sleep": 1.5})
            time.sleep(0.4)
            body = b'{"gone": true}'
            with socket.create_connection(("127.0.0.1", front.port)) as sock:
                sock.sendall(
                    b"POST /predictions/slow HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
                time.sleep(0.2)  # queued behind the busy worker; now the client leaves
            with pytest.raises(grpc.RpcError) as gone:
                ch.unary_unary(
                    "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions"
                )(request.SerializeToString(), timeout=0.2)
            assert gone.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert busy.result().status_code == 200
        time.sleep(0.5)
        assert rows_processed(server, "slow") - before == 1  # only the request that stayed


def test_sigkill_of_a_worker_fails_only_its_request(server: Server) -> None:
    pid = worker_pid(server, "victim")
    with ThreadPoolExecutor(3) as pool:
        in_flight = in_background(pool, server, "victim", {"sleep": 5})
        time.sleep(0.5)
        queued = in_background(pool, server, "victim", {"after": True})
        other = in_background(pool, server, "echo", {"other": True})
        time.sleep(0.3)
        os.kill(pid, signal.SIGKILL)
        died = in_flight.result()
        assert died.status_code == 500 and died.json() == WORKER_DIED
        grpc_health = server.grpc_health()  # TorchServe's answer: status OK, "Unhealthy" inside
        saw_unhealthy = httpx.get(f"{server.inference}/ping").status_code == 500
        assert queued.result().status_code == 200  # served by the restarted worker
        assert queued.result().json()["pid"] != pid
        assert other.result().status_code == 200
    assert grpc_health == {"status": "Unhealthy"}, "Ping must report a model without workers"
    assert saw_unhealthy, "/ping must report a model without a ready worker"
    wait_healthy(server)
    assert worker_pid(server, "victim") != pid
    restarts = metric_line(server, "marfleet_worker_restarts_total")
    assert 'model="victim"' in restarts and 'reason="crash"' in restarts


@pytest.mark.slow
def test_slow_handler_hits_the_response_timeout(server: Server) -> None:
    pid = worker_pid(server, "slow")
    started = time.monotonic()
    response = post(server, "slow", {"sleep": 30})
    elapsed = time.monotonic() - started
    assert response.status_code == 500 and response.json() == WORKER_DIED
    assert 2.5 < elapsed < 15, elapsed  # responseTimeout is 3 s
    wait_healthy(server)
    assert post(server, "slow", {"again": True}).status_code == 200
    assert worker_pid(server, "slow") != pid
    restarts = metric_line(server, "marfleet_worker_restarts_total")
    assert 'model="slow"' in restarts and 'reason="timeout"' in restarts


@pytest.mark.slow
def test_sigterm_finishes_in_flight_work_and_exits_0(store: Path, tmp_path: Path) -> None:
    with (
        serve(store, tmp_path, models=["slow.mar"], properties=PROPERTIES) as srv,
        ThreadPoolExecutor(1) as pool,
    ):
        in_flight = in_background(pool, srv, "slow", {"sleep": 1.5})
        time.sleep(0.5)
        worker = worker_pid(srv, "slow")
        srv.process.send_signal(signal.SIGTERM)
        assert in_flight.result().status_code == 200
        assert srv.process.wait(timeout=30) == 0
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{srv.inference}/ping", timeout=2)
        with pytest.raises(ProcessLookupError):
            os.kill(worker, 0)
        assert '"message": "stopped"' in srv.log()


def test_background_server_starts_and_stops_like_torchserve(store: Path, tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("inference", "management", "metrics")}
    config = tmp_path / "config.properties"
    config.write_text("".join(f"{n}_address=http://127.0.0.1:{p}\n" for n, p in ports.items()))
    marfleet = [sys.executable, "-m", "marfleet.runtime.cli", "serve"]
    # torchserve's own command line, options for parts marfleet lacks included
    started = subprocess.run(
        [
            *marfleet,
            "--start",
            "--ncs",
            "--model-store",
            str(store),
            "--ts-config",
            str(config),
            "--models",
            "echo.mar",
            "--log-config",
            str(tmp_path / "log4j2.xml"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 0, started.stderr
    (warning,) = [json.loads(line) for line in started.stderr.splitlines() if "option" in line]
    assert warning["option"] == "--log-config" and "ignored" in warning["message"]
    pid = int((tmp_path / "marfleet.pid").read_text())
    try:
        deadline = time.monotonic() + 90
        while True:
            with contextlib.suppress(httpx.TransportError, FileNotFoundError):
                # Token authorization is on by default, as in TorchServe: /ping needs the
                # inference key the server wrote to key_file.json where it was started.
                key = json.loads((tmp_path / "key_file.json").read_text())["inference"]["key"]
                pinged = httpx.get(
                    f"http://127.0.0.1:{ports['inference']}/ping",
                    headers={"Authorization": f"Bearer {key}"},
                )
                if pinged.status_code == 200:
                    break
            assert time.monotonic() < deadline, (tmp_path / "marfleet.log").read_text()[-3000:]
            time.sleep(0.2)
        # as torchserve: a second start while it runs is refused, naming the way to stop it
        again = subprocess.run(
            [*marfleet, "--model-store", str(store), "--ts-config", str(config)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert again.returncode == 1 and f"already running (pid {pid})" in again.stderr
        assert int((tmp_path / "marfleet.pid").read_text()) == pid
        stopped = subprocess.run(
            [*marfleet, "--stop"], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert stopped.returncode == 0, stopped.stderr
        assert not (tmp_path / "marfleet.pid").exists()
        assert not (tmp_path / "key_file.json").exists()  # its keys are no use any more
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        # nothing running is not an error (scripts stop before they start)
        idle = subprocess.run(
            [*marfleet, "--stop"], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert (idle.returncode, idle.stdout) == (0, "marfleet serve is not currently running\n")
        # a pid file naming another program's process (a pid reused) is not acted on
        (tmp_path / "marfleet.pid").write_text(str(os.getpid()))
        stale = subprocess.run(
            [*marfleet, "--stop"], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert stale.returncode == 0 and "removed a stale marfleet.pid" in stale.stdout
        assert not (tmp_path / "marfleet.pid").exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


@pytest.mark.slow
def test_sigterm_ends_a_stuck_worker_within_the_grace_period(store: Path, tmp_path: Path) -> None:
    properties = {**PROPERTIES, "shutdown_grace_seconds": "2"}
    with (
        serve(store, tmp_path, models=["victim.mar"], properties=properties) as srv,
        ThreadPoolExecutor(1) as pool,
    ):
        stuck = in_background(pool, srv, "victim", {"sleep": 60})  # responseTimeout is 120 s
        time.sleep(0.5)
        started = time.monotonic()
        srv.process.send_signal(signal.SIGTERM)
        assert srv.process.wait(timeout=30) == 0
        assert time.monotonic() - started < 10
        answer = stuck.result()
        assert answer.status_code == 500 and answer.json() == WORKER_DIED


def test_default_version_from_the_models_json(store: Path, tmp_path: Path) -> None:
    """config.properties' `models` JSON picks the default version (`defaultVersion: true`),
    whatever order the versions load in; an archive both listed by `load_models` and named by
    `marName` loads once (before: a spurious "model refused ... 409" at start-up)."""
    models = '{"echo": {"2.0": {"marName": "echo-v2.mar", "defaultVersion": true}}}'
    properties = {**PROPERTIES, "models": models}
    with serve(store, tmp_path, models=["echo.mar", "echo-v2.mar"], properties=properties) as srv:
        versions = httpx.get(f"{srv.management}/models/echo/all").json()  # healthy: all loaded
        assert sorted(v["modelVersion"] for v in versions) == ["1.0", "2.0"]
        (default,) = httpx.get(f"{srv.management}/models/echo").json()
        assert default["modelVersion"] == "2.0"
        assert "model refused" not in srv.log()


def test_a_low_open_file_limit_is_raised_and_a_flood_cannot_starve_other_ports(
    store: Path, tmp_path: Path
) -> None:
    """Started with a soft open-file limit of 200 and a hard one of 600 (a shell's 1024 is as
    short for 1000 connections per port): the server raises the soft limit to the hard one,
    and since 600 still cannot hold five listeners' 1000 connections, it lowers each
    listener's max_connections to fit and says so. A flood of idle connections on the
    inference port then takes its share only: the management and metrics ports answer, a
    worker can be added, and inference is served again once the flood is gone. (Before:
    1,100 connections at the limit of 1024 left the other ports answering nothing.)"""
    room = (600 - 256) // 5  # fdlimit.RESERVE kept free; inference, management, metrics, 2 gRPC
    with serve(
        store, tmp_path, models=["echo.mar"], properties=PROPERTIES, open_files=(200, 600)
    ) as srv:
        assert open_file_limits(srv.process.pid) == (600, 600)
        (warning,) = [
            json.loads(line) for line in srv.log().splitlines() if "open-file limit" in line
        ]
        assert (warning["lowered_to"], warning["max_connections"]) == (room, 1000), warning
        address = ("127.0.0.1", srv.ports["inference"])
        flood = [socket.create_connection(address, timeout=5) for _ in range(room)]
        try:
            time.sleep(0.3)
            with contextlib.closing(socket.create_connection(address, timeout=5)) as extra:
                extra.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
                status = extra.recv(65536).split(b"\r\n", 1)[0]
                assert status.startswith(b"HTTP/1.1 503"), status
            assert httpx.get(f"{srv.management}/models", timeout=10).status_code == 200
            assert httpx.get(f"{srv.metrics}/metrics", timeout=10).status_code == 200
            scaled = httpx.put(
                f"{srv.management}/models/echo?min_worker=2&synchronous=true", timeout=60
            )
            assert scaled.status_code == 200, scaled.text
        finally:
            for sock in flood:
                sock.close()
        deadline = time.monotonic() + 10
        while post(srv, "echo", {"x": 1}, timeout=10).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
