"""`marfleet router` as it runs: a real router process in front of real upstream processes on
loopback (the lightweight stand-ins of e2e.bench.router_upstream, so that tens of thousands of
requests stay cheap on a 2-core machine; test_router_serve.py puts real model servers behind it).
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import closing

import pytest

from e2e.bench.procs import free_port
from e2e.bench.router_procs import Client, Proc, metric, open_file_limits, router, upstream
from tests.rawhttp import read_response, send_quietly


@pytest.fixture(scope="module")
def stable() -> Iterator[Proc]:
    with upstream("stable") as proc:
        yield proc


@pytest.fixture(scope="module")
def canary() -> Iterator[Proc]:
    with upstream("canary") as proc:
        yield proc


@pytest.fixture(scope="module")
def backends(stable: Proc, canary: Proc) -> dict[str, str]:
    return {"stable": stable.url, "canary": canary.url}


def scrape(proc: Proc) -> str:
    with urllib.request.urlopen(proc.metrics_url, timeout=5) as response:
        text: str = response.read().decode()
        return text


def variants(client: Client, count: int, headers: dict[str, str] | None = None) -> list[str]:
    seen = []
    for _ in range(count):
        status, answer_headers, _ = client.request("GET", "/ping", headers=headers)
        assert status == 200
        seen.append(answer_headers["x-marfleet-variant"])
    return seen


def test_a_request_without_an_id_gets_one_the_variant_sees_too(backends: dict[str, str]) -> None:
    with router(backends, "--weights", "stable=100,canary=0") as proc:
        status, headers, data = Client(proc.url).request("POST", "/predictions/cart", b"{}")
    assert status == 200
    assert re.fullmatch(r"[0-9a-f-]{36}", headers["x-request-id"])
    assert json.loads(data)["headers"]["x-request-id"] == headers["x-request-id"]


def test_requests_pass_through_whole_and_answers_name_the_variant(backends: dict[str, str]) -> None:
    with router(backends, "--weights", "stable=0,canary=100") as proc:
        client = Client(proc.url)
        body = json.dumps({"inputs": [{"name": "x", "data": list(range(1000))}]}).encode()
        status, headers, data = client.request(
            "POST",
            "/v2/models/cart/versions/2/infer?trace=1",
            body,
            {"content-type": "application/json", "x-request-id": "r-1", "connection": "keep-alive"},
        )
        assert status == 200
        assert headers["x-marfleet-variant"] == "canary"
        assert headers["x-upstream"] == "canary"  # the upstream's own headers come back
        echoed = json.loads(data)
        assert (echoed["method"], echoed["path"], echoed["query"]) == (
            "POST",
            "/v2/models/cart/versions/2/infer",
            "trace=1",
        )
        assert echoed["body_bytes"] == len(body)
        assert echoed["headers"]["x-request-id"] == "r-1"
        assert echoed["headers"]["x-forwarded-for"] == "127.0.0.1"
        assert "connection" not in echoed["headers"]
        status, headers, data = client.request("DELETE", "/predictions/cart?status=404")
        assert (status, headers["x-marfleet-variant"]) == (404, "canary")
        status, headers, data = client.request("HEAD", "/ping")
        assert (status, data) == (200, b"")
        assert client.request("GET", "/ping")[0] == 200  # the connection survived the HEAD


def test_streamed_answers_are_relayed_chunk_by_chunk(backends: dict[str, str]) -> None:
    with router(backends, "--weights", "stable=100,canary=0") as proc:
        connection = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=10)
        started = time.monotonic()
        connection.request("POST", "/predictions/llm?chunks=4&chunk_ms=400", body=b"{}")
        response = connection.getresponse()
        assert response.getheader("transfer-encoding") == "chunked"
        assert response.getheader("x-marfleet-variant") == "stable"
        first = response.readline()
        first_at = time.monotonic() - started
        rest = response.read()
        total = time.monotonic() - started
        assert json.loads(first) == {"chunk": 0}
        assert [json.loads(line) for line in rest.splitlines()] == [{"chunk": n} for n in (1, 2, 3)]
        # The first chunk is not held back until the upstream finishes (1.2 s later).
        assert first_at < total - 0.8, (first_at, total)


def test_upstream_failures_are_answered_quickly_with_a_message(stable: Proc) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with router({"gone": dead}, "--weights", "gone=100") as proc:
        status, headers, body = Client(proc.url).request("GET", "/ping")
        assert (status, headers["x-marfleet-variant"]) == (502, "gone")
        error = json.loads(body)
        assert error["code"] == 502 and "cannot connect to upstream" in error["message"]
        assert "error" not in error  # TorchServe's shape on TorchServe's paths
        # on KServe's paths the reason is also in "error", which KServe's clients read
        status, _, body = Client(proc.url).request("POST", "/v2/models/m/infer", b"{}")
        error = json.loads(body)
        assert status == 502 and error["error"] == error["message"]
    with router(
        {"stable": stable.url, "gone": dead},
        "--weights",
        "stable=50,gone=50",
        "--response-timeout",
        "0.5",
    ) as proc:
        client = Client(proc.url)
        # A variant that refuses connections never got the request: the other one answers it.
        answers = [client.request("GET", "/ping") for _ in range(4)]
        assert [(a[0], a[1]["x-marfleet-variant"]) for a in answers] == [(200, "stable")] * 4
        started = time.monotonic()
        slow = [client.request("GET", "/predictions/m?sleep_ms=5000") for _ in range(2)]
        elapsed = time.monotonic() - started
        assert [a[0] for a in slow] == [504, 504]
        assert "sent nothing for 0.5 s" in json.loads(slow[0][2])["message"]
        assert elapsed < 3, elapsed
        text = scrape(proc)
        assert metric(text, "marfleet_router_upstream_errors_total", variant="gone") >= 2
        assert metric(text, "marfleet_router_upstream_errors_total", reason="timeout") == 2
        assert metric(text, "marfleet_router_requests_total", code_class="5xx") == 2


def test_a_variant_that_never_accepts_the_connection_hands_the_request_to_another(
    stable: Proc,
) -> None:
    # A listener whose accept queue is full drops new SYNs, as a Service still sending new
    # connections to a pod that is gone does: connecting waits for the connect timeout.
    with closing(socket.socket()) as hole, closing(socket.socket()) as filler:
        hole.bind(("127.0.0.1", 0))
        hole.listen(0)
        filler.connect(hole.getsockname())  # fills the queue of one: later SYNs are dropped
        black_hole = f"http://127.0.0.1:{hole.getsockname()[1]}"
        flags = ["--weights", "stable=50,hole=50", "--connect-timeout", "0.3"]
        with router({"stable": stable.url, "hole": black_hole}, *flags) as proc:
            client = Client(proc.url)
            answers = [client.request("GET", "/ping") for _ in range(6)]
            assert [(a[0], a[1]["x-marfleet-variant"]) for a in answers] == [(200, "stable")] * 6
            text = scrape(proc)
            errors = metric(text, "marfleet_router_upstream_errors_total", variant="hole")
            assert errors >= 1, "no request was routed to the unreachable variant first"
            assert metric(text, "marfleet_router_upstream_errors_total", reason="timeout") >= 1
        with router(
            {"hole": black_hole}, "--weights", "hole=100", "--connect-timeout", "0.3"
        ) as proc:
            status, headers, body = Client(proc.url).request("GET", "/ping")
            assert (status, headers["x-marfleet-variant"]) == (504, "hole")
            assert "took over 0.3 s" in json.loads(body)["message"]


@pytest.mark.slow
@pytest.mark.parametrize("weights", [(90, 10), (50, 50), (99, 1)])
def test_split_is_within_a_point_over_10000_requests(
    backends: dict[str, str], weights: tuple[int, int]
) -> None:
    spec = f"stable={weights[0]},canary={weights[1]}"
    with router(backends, "--weights", spec) as proc:
        seen = variants(Client(proc.url), 10_000)
    counts = Counter(seen)
    assert abs(100 * counts["canary"] / 10_000 - weights[1]) <= 1
    for start in range(0, 9_001, 100):
        window = Counter(seen[start : start + 1_000])
        assert abs(window["canary"] / 10 - weights[1]) <= 1, (start, window)


@pytest.mark.slow
def test_sticky_keys_stay_put_and_a_weight_change_moves_only_what_it_must(
    backends: dict[str, str],
) -> None:
    keys = [f"user-{n}" for n in range(2_000)]

    def assign(proc: Proc) -> dict[str, str]:
        client = Client(proc.url)
        return {k: variants(client, 1, {"x-user-id": k})[0] for k in keys}

    sticky = ("--sticky-header", "X-User-Id")
    with router(backends, "--weights", "stable=90,canary=10", *sticky) as proc:
        before = assign(proc)
        assert assign(proc) == before
    # A second router process (another replica, or a restart) agrees key for key.
    with router(backends, "--weights", "stable=90,canary=10", *sticky) as proc:
        assert assign(proc) == before
    with router(backends, "--weights", "stable=80,canary=20", *sticky) as proc:
        after = assign(proc)
    moved = Counter((before[k], after[k]) for k in keys if before[k] != after[k])
    assert set(moved) == {("stable", "canary")}
    assert abs(moved[("stable", "canary")] / len(keys) - 0.10) <= 0.02
    assert abs(Counter(after.values())["canary"] / len(keys) - 0.20) <= 0.02


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[int(0.99 * len(ordered))]


def timed(client: Client, count: int) -> list[float]:
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        status, _, _ = client.request("POST", "/predictions/m", b'{"x": 1}')
        latencies.append(time.perf_counter() - started)
        assert status == 200
    return latencies


@pytest.mark.slow
def test_mirroring_adds_no_latency_and_no_errors(stable: Proc) -> None:
    with upstream("shadow", delay_ms=200) as shadow:
        both = {"stable": stable.url, "shadow": shadow.url}
        mirror = ("--mirror", "shadow=20", "--mirror-limit", "200")
        with router(both, "--weights", "stable=100,shadow=0") as plain:
            client = Client(plain.url)
            timed(client, 200)
            without_mirror = p99(timed(client, 2_000))
        with router(both, "--weights", "stable=100,shadow=0", *mirror) as mirrored:
            client = Client(mirrored.url)
            timed(client, 200)
            with_mirror = p99(timed(client, 2_000))
            # A failing shadow is not the client's problem either.
            urllib.request.urlopen(
                urllib.request.Request(f"{shadow.url}/admin/fail?status=500", method="POST")
            ).close()
            timed(client, 500)
            text = scrape(mirrored)
    sent = metric(text, "marfleet_router_mirrored_requests_total", variant="shadow")
    dropped = metric(text, "marfleet_router_mirror_dropped_total", variant="shadow")
    assert sent + dropped == pytest.approx(0.2 * 2_700, abs=1)
    assert dropped == 0
    # Each copy takes the shadow 200 ms; had the router waited for any, p99 would show it.
    assert with_mirror < without_mirror + 0.05, (with_mirror, without_mirror)
    print(
        f"client p99 without mirror {without_mirror * 1e3:.2f} ms, with {with_mirror * 1e3:.2f} ms"
    )


ROUTER_LIMITS = (
    "--max-request-bytes=100000",
    "--max-request-head-bytes=8192",
    "--request-head-timeout=4",
    "--request-body-timeout=4",
    "--max-connections=30",  # room for the refused ones above while their closes land
)


def test_the_router_bounds_what_a_client_can_make_it_hold(stable: Proc) -> None:
    """Items 1, 2 and 4 of the HTTP front door, against the router process: it shares the
    model server's HTTP core, and these are its own flags."""
    with router({"stable": stable.url}, "--weights", "stable=100", *ROUTER_LIMITS) as proc:

        def connect() -> socket.socket:
            return socket.create_connection(("127.0.0.1", proc.port), timeout=10)

        def answer(data: bytes, *, dribble: bytes = b"", times: int = 0) -> int:
            with closing(connect()) as sock:
                sock.sendall(data)
                for _ in range(times):
                    send_quietly(sock, dribble)
                return read_response(sock)[0]

        # a head that never ends: 431 (a header line) or 414 (the URL), past 8 KiB
        endless_header = b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Grow: "
        assert answer(endless_header, dribble=b"a" * 10_240, times=20) == 431
        assert answer(b"GET /", dribble=b"a" * 10_240, times=20) == 414
        # HTTP/0.9, and a chunk size that overflows
        assert answer(b"GET /\r\n\r\n") == 505
        chunked = b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        assert answer(chunked + b"ffffffffffffffffffffff\r\n") == 413

        # slow clients: 16 heads dribbled a byte at a time, 4 bodies cut off half-way
        slow = [connect() for _ in range(16)]
        half = [connect() for _ in range(4)]
        extra: list[socket.socket] = []
        attack_started = time.monotonic()
        for sock in slow:
            sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n")
        for sock in half:
            sock.sendall(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 50000\r\n\r\n" + b"{")
        try:
            for sock in slow:
                sock.sendall(b"X")
            # meanwhile a normal client's prediction is answered, while all 20 are still held
            client = Client(proc.url)
            status, headers, _ = client.request("POST", "/predictions/m", b'{"x": 1}')
            client.close()
            assert (status, headers["x-marfleet-variant"]) == (200, "stable")
            assert time.monotonic() - attack_started < 4, "answered only once the attack ended"
            # the listener's cap: 20 held + 10 more, and the next is refused
            extra += [connect() for _ in range(10)]
            for sock in extra:
                sock.sendall(b"GET /ping HTTP/1.1\r\n")
            time.sleep(0.2)
            assert answer(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n") == 503
            # each slow client gets its 408 once its head or body timeout passes
            assert [read_response(sock)[0] for sock in slow + half] == [408] * 20
        finally:
            for sock in [*slow, *half, *extra]:
                sock.close()
        deadline = time.monotonic() + 5
        while answer(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n") != 200:  # slots free again
            assert time.monotonic() < deadline, "the closed connections still count"
            time.sleep(0.1)


def test_a_low_open_file_limit_lowers_max_connections_to_fit(stable: Proc) -> None:
    """Started with open-file limits 200 (soft) and 400 (hard): the router raises the soft one
    to 400 and, as 400 cannot hold 1000 client connections, each with one to a variant, plus
    its metrics port's, lowers --max-connections to fit, and says so; a flood of idle
    connections then meets 503 past that, while the metrics port still answers."""
    room = (400 - 256) // 3  # fdlimit.RESERVE kept free; clients, their upstreams, metrics
    with router({"stable": stable.url}, "--weights", "stable=100", open_files=(200, 400)) as proc:
        assert open_file_limits(proc.process.pid) == (400, 400)
        (warning,) = [
            json.loads(line)
            for line in proc.log.read_text().splitlines()
            if "open-file limit" in line
        ]
        assert (warning["lowered_to"], warning["listeners"]) == (room, 3), warning
        flood = [socket.create_connection(("127.0.0.1", proc.port), timeout=5) for _ in range(room)]
        try:
            time.sleep(0.3)
            with closing(socket.create_connection(("127.0.0.1", proc.port), timeout=5)) as sock:
                sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
                assert read_response(sock)[0] == 503
            assert "marfleet_router" in scrape(proc)
        finally:
            for sock in flood:
                sock.close()
        deadline = time.monotonic() + 5
        while True:  # the slots are free again
            with closing(socket.create_connection(("127.0.0.1", proc.port), timeout=5)) as sock:
                sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
                if read_response(sock)[0] == 200:
                    break
            assert time.monotonic() < deadline, "the closed connections still count"
            time.sleep(0.1)
