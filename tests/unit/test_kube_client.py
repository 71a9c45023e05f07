"""KubeAPI's HTTP exchanges against a scripted HTTP server on loopback.

A scripted server, not the real API server, because these are answers a real one gives only at
its own discretion or never: a body streamed in chunks, an answer larger than any object, a
server that accepts a request and never answers. The real API server's side is covered by
tests/integration/test_operator*.py and test_tenancy.py, where every call goes through here."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web
from marfleet.operator import kube
from marfleet.operator.kube import ApiError, KubeAPI, Ref

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CONFIGMAP = Ref("v1", "ConfigMap", "ns", "c")


@asynccontextmanager
async def server(handler: Handler, tmp_path: Path, **options: float) -> AsyncIterator[KubeAPI]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {"token": "secret-token"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(config))
    try:
        async with KubeAPI(str(path), **options) as api:  # type: ignore[arg-type]
            yield api
    finally:
        await runner.cleanup()


def test_a_streamed_answer_is_read_whole_and_the_request_is_as_sent(tmp_path: Path) -> None:
    seen: list[tuple[str, str, str | None, str | None, bytes]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen.append(
            (
                request.method,
                request.path_qs,
                request.headers.get("Authorization"),
                request.headers.get("Content-Type"),
                body,
            )
        )
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        answer = json.dumps({"metadata": {"name": "c"}, "data": {"k": "v" * 100_000}}).encode()
        for start in range(0, len(answer), 4096):
            await response.write(answer[start : start + 4096])
        await response.write_eof()
        return response

    async def scenario() -> dict[str, object]:
        async with server(handler, tmp_path) as api:
            obj = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "c", "namespace": "ns"},
            }
            return await api.apply_new(obj)

    answer = asyncio.run(scenario())
    assert answer["data"] == {"k": "v" * 100_000}
    method, target, authorization, content_type, body = seen[0]
    assert method == "PATCH"
    assert target == "/api/v1/namespaces/ns/configmaps/c?fieldManager=marfleet-operator&force=true"
    assert authorization == "Bearer secret-token"
    assert content_type == "application/apply-patch+yaml"
    assert json.loads(body)["metadata"]["resourceVersion"] == "1"


async def chunked_answer(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    for _ in range(100):
        await response.write(b" " * 1000)
    await response.write_eof()
    return response


async def answer_of_given_length(request: web.Request) -> web.StreamResponse:
    return web.Response(body=b" " * 100_000, content_type="application/json")


@pytest.mark.parametrize("handler", [chunked_answer, answer_of_given_length])
def test_an_answer_too_large_fails_the_call(
    handler: Handler, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whether the answer's length is announced or not, it is never read beyond the cap."""
    monkeypatch.setattr(kube, "MAX_ANSWER_BYTES", 10_000)

    async def scenario() -> None:
        async with server(handler, tmp_path) as api:
            await api.get(CONFIGMAP)

    with pytest.raises(ApiError) as caught:
        asyncio.run(scenario())
    assert caught.value.status == 0 and "exceeds 10000 bytes" in caught.value.message


def test_a_refusal_names_the_servers_reason_and_a_missing_object_is_none(tmp_path: Path) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method == "GET":
            return web.json_response({"reason": "NotFound", "message": "gone"}, status=404)
        status = {"reason": "Conflict", "message": "the object has been modified"}
        return web.json_response(status, status=409)

    async def scenario() -> tuple[object, ApiError]:
        async with server(handler, tmp_path) as api:
            missing = await api.get(CONFIGMAP)
            try:
                await api.apply(
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "metadata": {"name": "c", "namespace": "ns"},
                    }
                )
            except ApiError as error:
                return missing, error
            raise AssertionError("a 409 must raise")

    missing, error = asyncio.run(scenario())
    assert missing is None
    assert (error.status, error.reason, error.message) == (
        409,
        "Conflict",
        "the object has been modified",
    )
    assert error.retriable


def test_a_server_that_never_answers_fails_the_call_in_time(tmp_path: Path) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(30)
        raise AssertionError("not reached")

    async def scenario() -> float:
        async with server(handler, tmp_path, timeout=0.5) as api:
            started = asyncio.get_running_loop().time()
            with pytest.raises(ApiError) as caught:
                await api.get(CONFIGMAP)
            assert caught.value.status == 0 and caught.value.retriable
            return asyncio.get_running_loop().time() - started

    assert asyncio.run(scenario()) < 5


def test_no_more_calls_are_in_flight_than_connections(tmp_path: Path) -> None:
    in_flight = 0
    most = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return web.json_response({"metadata": {"name": "c"}})

    async def scenario() -> None:
        async with server(handler, tmp_path, connections=3) as api:
            await asyncio.gather(*(api.get(CONFIGMAP) for _ in range(12)))

    asyncio.run(scenario())
    assert most == 3
