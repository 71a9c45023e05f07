"""What a gRPC client may make a listener hold, on `marfleet serve`'s inference port and on
`marfleet router`'s gRPC port: both open their listeners through `grpc_listener.py`, with
limits from the same keys as HTTP (docs/operations.md#limits).

Every test drives the real processes over real sockets: raw TCP for connections that never
speak or only open HTTP/2 (and hand-made HTTP/2 frames for a message begun and never
finished, which no gRPC client sends), grpcio for calls. One fault cannot be caused on
loopback: a client whose network vanishes without closing its connection. A relay that stops
passing bytes on (`_Blackhole`) stands in for it, and the test says so.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import grpc
import pytest
from marfleet.operator.render import ROUTER_FOLLOWS
from marfleet.runtime.server.protos import inference_pb2 as ts_pb2

from e2e import h2raw
from e2e.bench.router_procs import router
from e2e.support import free_port
from tests.integration.server_archives import build_store
from tests.serving import serve

MAX_CONNECTIONS = 4
HEAD_TIMEOUT_S = 1.0
IDLE_TIMEOUT_S = 1.5  # a connection without calls; also a request stream's pauses
KEEPALIVE_S = 1.0
MESSAGE_TIMEOUT_S = 4.0  # past a vanished client's keepalive cut-off, so each test sees its own
MAX_MESSAGE = 64 * 1024
SERVICE = "/org.pytorch.serve.grpc.inference.InferenceAPIsService"


@contextmanager
def _server_and_router(root: Path, properties: dict[str, str]) -> Iterator[dict[str, str]]:
    """host:port of a server's gRPC inference port with `properties`, and of a router's gRPC
    port before it with the same limits as flags (the operator's mapping, and
    max_connections)."""
    flags = [
        part
        for key, flag in ROUTER_FOLLOWS
        if key in properties
        for part in (flag, properties[key])
    ]
    if "max_connections" in properties:
        flags += ["--max-connections", properties["max_connections"]]
    with ExitStack() as stack:
        server = stack.enter_context(
            serve(build_store(root), root / "run", models=["echo.mar"], properties=properties)
        )
        grpc_port = free_port()
        stack.enter_context(
            router(
                {"stable": server.inference},
                *("--weights", "stable=100", "--grpc-port", str(grpc_port)),
                f"--grpc-backend=stable={server.grpc}",
                *flags,
            )
        )
        yield {"server": server.grpc, "router": f"127.0.0.1:{grpc_port}"}


@pytest.fixture(scope="module")
def targets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The server and the router before it, each with the same small limits."""
    properties = {
        "max_connections": str(MAX_CONNECTIONS),
        "request_head_timeout_seconds": str(HEAD_TIMEOUT_S),
        "keepalive_timeout_seconds": str(IDLE_TIMEOUT_S),
        "grpc_keepalive_seconds": str(KEEPALIVE_S),
        "request_body_timeout_seconds": str(MESSAGE_TIMEOUT_S),
        "max_request_size": str(MAX_MESSAGE),
    }
    with _server_and_router(tmp_path_factory.mktemp("grpc-limits"), properties) as found:
        yield found


TARGETS = ["server", "router"]


def _connect(target: str, first_bytes: bytes = b"") -> socket.socket:
    host, port = target.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=5)
    if first_bytes:
        sock.sendall(first_bytes)
    return sock


def _seconds_until_closed(sock: socket.socket, limit: float) -> float | None:
    """How long until the peer closes `sock` (reading and dropping what it sends); None if it
    is still open after `limit` seconds."""
    started = time.monotonic()
    sock.settimeout(0.05)
    while time.monotonic() - started < limit:
        try:
            if not sock.recv(65536):
                return time.monotonic() - started
        except TimeoutError:
            continue
        except OSError:  # reset
            return time.monotonic() - started
    return None


def _ping(target: str) -> grpc.StatusCode:
    with grpc.insecure_channel(target) as channel:
        try:
            channel.unary_unary(f"{SERVICE}/Ping")(b"", timeout=10)
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("where", TARGETS)
@pytest.mark.parametrize(
    ("first_bytes", "timeout"),
    [(b"", HEAD_TIMEOUT_S), (h2raw.PREFACE, IDLE_TIMEOUT_S)],
    ids=["never speaks: the head timeout", "opens HTTP/2, makes no call: the keepalive timeout"],
)
def test_a_connection_that_does_nothing_is_closed_after_its_timeout(
    targets: dict[str, str], where: str, first_bytes: bytes, timeout: float
) -> None:
    with _connect(targets[where], first_bytes) as sock:
        closed = _seconds_until_closed(sock, 10)
    assert closed is not None and timeout * 0.8 <= closed < timeout + 3, closed


@pytest.mark.parametrize("where", TARGETS)
def test_connections_beyond_max_connections_are_closed_at_once(
    targets: dict[str, str], where: str
) -> None:
    with ExitStack() as stack:
        held = [
            stack.enter_context(_connect(targets[where], h2raw.PREFACE))
            for _ in range(MAX_CONNECTIONS)
        ]
        one_more = stack.enter_context(_connect(targets[where], h2raw.PREFACE))
        assert _seconds_until_closed(one_more, 0.5) is not None  # refused
        for sock in held:  # while those within the limit stay open
            sock.setblocking(False)
            with suppress(BlockingIOError):
                assert sock.recv(65536) != b""
    deadline = time.monotonic() + 10  # once they are gone, calls get through again
    while _ping(targets[where]) != grpc.StatusCode.OK:
        assert time.monotonic() < deadline, "the freed connections did not make room"
        time.sleep(0.2)


async def _waiting_requests(stop: asyncio.Event) -> AsyncIterator[bytes]:
    await stop.wait()
    return
    yield b""  # an async generator that sends nothing until told to end


@pytest.mark.parametrize("where", TARGETS)
def test_calls_beyond_max_connections_are_resource_exhausted(
    targets: dict[str, str], where: str
) -> None:
    async def scenario() -> tuple[grpc.StatusCode, grpc.StatusCode]:
        stop = asyncio.Event()
        async with grpc.aio.insecure_channel(targets[where]) as channel:
            open_streams = channel.stream_stream(f"{SERVICE}/StreamPredictions2")
            streams = [open_streams(_waiting_requests(stop)) for _ in range(MAX_CONNECTIONS)]
            for stream in streams:
                await stream.wait_for_connection()
            await asyncio.sleep(0.5)  # each stream is a call the listener has taken
            ping = channel.unary_unary(f"{SERVICE}/Ping")
            try:
                await ping(b"", timeout=10)
                beyond = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as error:
                beyond = error.code()
            stop.set()
            for stream in streams:
                await stream.code()
            await asyncio.sleep(0.2)
            await ping(b"", timeout=10)  # the streams ended: room again
            return beyond, grpc.StatusCode.OK

    beyond, after = asyncio.run(scenario())
    assert beyond == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert after == grpc.StatusCode.OK


@pytest.mark.parametrize("where", TARGETS)
def test_a_message_over_the_request_size_is_resource_exhausted(
    targets: dict[str, str], where: str
) -> None:
    with grpc.insecure_channel(targets[where]) as channel:
        predict = channel.unary_unary(f"{SERVICE}/Predictions")
        request = ts_pb2.PredictionsRequest(model_name="echo", input={"body": bytes(MAX_MESSAGE)})
        with pytest.raises(grpc.RpcError) as refused:
            predict(request.SerializeToString(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("where", TARGETS)
def test_an_answer_past_grpcs_4_mib_default_reaches_the_client(
    targets: dict[str, str], where: str
) -> None:
    """max_response_size (6553500 by default) bounds what the server sends, and the router
    passes on as much (`--max-response-bytes`), where gRPC's own default is 4 MiB."""
    pad = 5_000_000
    options = [("grpc.max_receive_message_length", 16 << 20)]
    with grpc.insecure_channel(targets[where], options=options) as channel:
        predict = channel.unary_unary(
            f"{SERVICE}/Predictions",
            request_serializer=ts_pb2.PredictionsRequest.SerializeToString,
            response_deserializer=ts_pb2.PredictionResponse.FromString,
        )
        request = ts_pb2.PredictionsRequest(
            model_name="echo", input={"body": json.dumps({"pad": pad}).encode()}
        )
        answer = predict(request, timeout=30)
    assert len(json.loads(answer.prediction)["pad"]) == pad


@pytest.mark.parametrize("where", TARGETS)
def test_metadata_is_bounded_by_the_request_head_size(targets: dict[str, str], where: str) -> None:
    """max_request_head_size (64 KiB by default) bounds a call's metadata as it bounds HTTP
    headers: a 30 KB token passes (gRPC's own default refuses it), 100 KB is refused."""
    options = [("grpc.max_metadata_size", 1 << 20), ("grpc.absolute_max_metadata_size", 1 << 20)]
    with grpc.insecure_channel(targets[where], options=options) as channel:
        ping = channel.unary_unary(f"{SERVICE}/Ping")
        ping(b"", metadata=[("x-token", "x" * 30_000)], timeout=10)
        with pytest.raises(grpc.RpcError) as refused:
            ping(b"", metadata=[("x-token", "x" * 100_000)], timeout=10)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


class _Blackhole:
    """A TCP relay to `target` that, once `vanish()` is called, passes nothing on in either
    direction and keeps both connections open: what a server sees of a client whose network
    went away without a FIN or a reset (not something loopback can do by itself)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.passing = True
        self.upstream_closed = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def vanish(self) -> None:
        self.passing = False

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = self.target.rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer, upstream=True)
        )

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool = False
    ) -> None:
        while True:
            try:
                data = await reader.read(65536)
            except OSError:
                data = b""
            if not data:
                if upstream:
                    self.upstream_closed.set()
                return
            if self.passing:
                writer.write(data)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()


@pytest.mark.parametrize("where", TARGETS)
def test_a_client_that_vanishes_mid_call_is_cut_off_by_keepalive(
    targets: dict[str, str], where: str
) -> None:
    async def scenario() -> float | None:
        relay = _Blackhole(targets[where])
        await relay.start()
        stop = asyncio.Event()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{relay.port}")
        # a Predictions call whose message is still to come (bounded by MESSAGE_TIMEOUT_S)
        stream = channel.stream_unary(f"{SERVICE}/Predictions")(_waiting_requests(stop))
        await stream.wait_for_connection()
        await asyncio.sleep(0.3)
        relay.vanish()
        vanished = time.monotonic()
        try:
            await asyncio.wait_for(relay.upstream_closed.wait(), timeout=15)
            took: float | None = time.monotonic() - vanished
        except TimeoutError:
            took = None
        stop.set()
        stream.cancel()
        await channel.close(None)
        await relay.close()
        return took

    took = asyncio.run(scenario())
    # pinged after KEEPALIVE_S of silence, closed KEEPALIVE_S later without an answer (the
    # call's wait for its message would end at MESSAGE_TIMEOUT_S, its connection later still)
    assert took is not None and took < MESSAGE_TIMEOUT_S + 0.5, took
    assert _ping(targets[where]) == grpc.StatusCode.OK  # its call no longer holds a place


async def _never_sends() -> AsyncIterator[bytes]:
    await asyncio.sleep(3600)
    yield b""


async def _sends_nothing() -> AsyncIterator[bytes]:
    return
    yield b""


async def _call_outcome(call: Any) -> tuple[grpc.StatusCode, str, float]:
    started = time.monotonic()
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or "", time.monotonic() - started
    return grpc.StatusCode.OK, "", time.monotonic() - started


@pytest.mark.parametrize("where", TARGETS)
def test_a_unary_call_whose_message_never_comes_ends_after_the_body_timeout(
    targets: dict[str, str], where: str
) -> None:
    """A client that opens a Predictions call and answers every ping but never sends the
    request: DEADLINE_EXCEEDED after request_body_timeout_seconds (grpcio alone, and
    TorchServe, keep the call as long as the client does), and its place is free again."""

    async def scenario() -> tuple[grpc.StatusCode, str, float]:
        async with grpc.aio.insecure_channel(targets[where]) as channel:
            call = channel.stream_unary(f"{SERVICE}/Predictions")(_never_sends(), timeout=60)
            return await _call_outcome(call)

    code, details, took = asyncio.run(scenario())
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED, (code, details)
    assert "request_body_timeout_seconds" in details
    assert MESSAGE_TIMEOUT_S * 0.9 <= took < MESSAGE_TIMEOUT_S + 2, took
    assert _ping(targets[where]) == grpc.StatusCode.OK


@pytest.mark.parametrize("where", TARGETS)
def test_a_unary_call_ended_without_its_message_is_internal_as_torchserve(
    targets: dict[str, str], where: str
) -> None:
    """TorchServe (grpc-java) answers INTERNAL "Half-closed without a request"; grpcio alone
    would never answer."""

    async def scenario() -> tuple[grpc.StatusCode, str, float]:
        async with grpc.aio.insecure_channel(targets[where]) as channel:
            call = channel.stream_unary(f"{SERVICE}/Ping")(_sends_nothing(), timeout=10)
            return await _call_outcome(call)

    code, details, _ = asyncio.run(scenario())
    assert code == grpc.StatusCode.INTERNAL
    assert details.startswith("Half-closed without a request")


@pytest.mark.parametrize("where", TARGETS)
def test_a_stream_that_stops_sending_ends_after_the_keepalive_timeout(
    targets: dict[str, str], where: str
) -> None:
    """StreamPredictions2: one request answered, then nothing: a stream between requests is
    idle, and its wait for the next one ends after keepalive_timeout_seconds (through the
    router, the server's bound reaches the client)."""

    async def scenario() -> tuple[list[bytes], grpc.StatusCode, str, float]:
        stop = asyncio.Event()

        async def one_then_silence() -> AsyncIterator[ts_pb2.PredictionsRequest]:
            yield ts_pb2.PredictionsRequest(model_name="echo", input={"body": b'{"a": 1}'})
            await stop.wait()

        async with grpc.aio.insecure_channel(targets[where]) as channel:
            stream = channel.stream_stream(
                f"{SERVICE}/StreamPredictions2",
                request_serializer=ts_pb2.PredictionsRequest.SerializeToString,
                response_deserializer=ts_pb2.PredictionResponse.FromString,
            )(one_then_silence(), timeout=60)
            answers = [(await stream.read()).prediction]
            started = time.monotonic()
            code = await stream.code()
            took = time.monotonic() - started
            stop.set()
            return answers, code, await stream.details() or "", took

    answers, code, details, took = asyncio.run(scenario())
    assert json.loads(answers[0])["batch"] == 1  # the echo handler's answer to the one request
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED, (code, details)
    assert "keepalive_timeout_seconds" in details
    assert IDLE_TIMEOUT_S * 0.8 <= took < IDLE_TIMEOUT_S + 2, took


@pytest.mark.parametrize("where", TARGETS)
def test_a_message_begun_and_never_finished_ends_after_the_body_timeout(
    targets: dict[str, str], where: str
) -> None:
    """A client that sends a Predictions call's headers and the first 10 bytes of a message
    announced as 1,000, then nothing, while it acknowledges every ping: the call is ended
    (its trailers or a reset) after request_body_timeout_seconds."""
    begun = h2raw.frame(h2raw.DATA, 0, 1, b"\0" + (1000).to_bytes(4, "big") + bytes(10))
    headers = h2raw.call_headers(f"{SERVICE}/Predictions", targets[where])
    opening = h2raw.frame(h2raw.HEADERS, h2raw.END_HEADERS, 1, headers)
    with _connect(targets[where], h2raw.PREFACE + opening + begun) as sock:
        outcome = h2raw.watch(sock, MESSAGE_TIMEOUT_S + 5, stream=1)
    assert outcome is not None, "the call was not ended"
    how, took = outcome
    assert how == "ended" and MESSAGE_TIMEOUT_S * 0.9 <= took < MESSAGE_TIMEOUT_S + 2, outcome
    assert _ping(targets[where]) == grpc.StatusCode.OK


AGE_S = 1.0


@pytest.fixture(scope="module")
def aging(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A server and a router before it whose gRPC connections age out after AGE_S."""
    properties = {"grpc_max_connection_age_seconds": str(AGE_S)}
    with _server_and_router(tmp_path_factory.mktemp("grpc-age"), properties) as found:
        yield found


@pytest.mark.parametrize("where", TARGETS)
def test_answers_never_read_are_dropped_with_their_connection_at_its_age(
    aging: dict[str, str], where: str
) -> None:
    """Ten Predictions calls for 1 MB answers on a connection that never opens its flow-control
    window, while it acknowledges every ping: gRPC keeps the answers in the server's memory
    until the connection closes, which it does twice its age after it opened."""
    message = ts_pb2.PredictionsRequest(
        model_name="echo", input={"body": json.dumps({"pad": 1_000_000}).encode()}
    ).SerializeToString()
    headers = h2raw.call_headers(f"{SERVICE}/Predictions", aging[where])
    calls = b"".join(
        h2raw.frame(h2raw.HEADERS, h2raw.END_HEADERS, stream, headers)
        + h2raw.frame(h2raw.DATA, h2raw.END_STREAM, stream, h2raw.grpc_message(message))
        for stream in range(1, 21, 2)
    )
    with _connect(aging[where], h2raw.PREFACE + calls) as sock:
        outcome = h2raw.watch(sock, 4 * AGE_S + 5)
    assert outcome is not None and outcome[0] == "closed", outcome
    assert AGE_S <= outcome[1] < 2 * AGE_S + 3, outcome
    assert _ping(aging[where]) == grpc.StatusCode.OK


@pytest.mark.parametrize("where", TARGETS)
def test_a_client_calls_on_across_its_connections_ages(aging: dict[str, str], where: str) -> None:
    """One grpcio channel calling without a pause for four connection ages (each call takes
    the echo model's 300 ms batch delay): every call is answered, the client moving to a new
    connection after each GOAWAY."""
    with grpc.insecure_channel(aging[where]) as channel:
        predict = channel.unary_unary(
            f"{SERVICE}/Predictions",
            request_serializer=ts_pb2.PredictionsRequest.SerializeToString,
            response_deserializer=ts_pb2.PredictionResponse.FromString,
        )
        request = ts_pb2.PredictionsRequest(model_name="echo", input={"body": b'{"a": 1}'})
        answered, started = 0, time.monotonic()
        while time.monotonic() - started < 4 * AGE_S:
            predict(request, timeout=10)
            answered += 1
    assert answered >= 8
