"""The list+watch loop against a scripted HTTP server on loopback.

A scripted server, not the real API server, because what is tested here are the paths a real
one takes only at its own discretion: a list in several pages, a watch that ends, a watch
answered with 410 Gone (its version compacted away) and a resource that is not served. The
real API server's side is covered by tests/integration/test_operator*.py, where every event
the operator sees comes through this module."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from marfleet.operator import watch as watch_module
from marfleet.operator.kube import Credentials
from marfleet.operator.watch import Resource, Session, Watch

RESOURCE = Resource("v1", "ConfigMap", "configmaps", label_selector="a=b")


def cm(name: str, rv: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": rv}}


class Script:
    """Answers lists and watches from queues the test fills."""

    def __init__(self) -> None:
        self.lists: list[list[list[dict[str, Any]]]] = []
        """Each list request takes the next entry: its pages."""
        self.watches: list[list[dict[str, Any]]] = []
        """Each watch request takes the next entry: the events it streams, then it ends."""
        self.requests: list[dict[str, str]] = []
        self.missing = False

    async def handle(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        self.requests.append(query)
        if self.missing:
            return web.json_response({"reason": "NotFound", "message": "no"}, status=404)
        if query.get("watch") == "true":
            response = web.StreamResponse()
            await response.prepare(request)
            events = self.watches.pop(0) if self.watches else []
            for event in events:
                await response.write(json.dumps(event).encode() + b"\n")
            if not events:
                await asyncio.sleep(0.05)
            return response
        pages = self.lists[0]
        index = int(query.get("continue") or 0)
        page = pages[index]
        last = index == len(pages) - 1
        if last:
            self.lists.pop(0)
        return web.json_response(
            {
                "metadata": {
                    "resourceVersion": f"list-{index}",
                    "continue": "" if last else str(index + 1),
                },
                "items": page,
            }
        )


@asynccontextmanager
async def served(script: Script) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/api/v1/namespaces/ns/configmaps", script.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def creds(server: str) -> Credentials:
    return Credentials(server, None, False, "Bearer", "tok", None, None)


async def follow(script: Script, until: Any, timeout: float = 5) -> list[tuple[str, str, str]]:
    seen: list[tuple[str, str, str]] = []

    def handler(kind: str, obj: dict[str, Any]) -> None:
        seen.append((kind, obj["metadata"]["name"], obj["kind"]))

    async with served(script) as server:
        session = Session(lambda: creds(server))
        await session.open()
        watch = Watch(session, RESOURCE, "ns", handler, page_size=2, watch_seconds=1)
        task = asyncio.create_task(watch.run())
        try:
            deadline = asyncio.get_running_loop().time() + timeout
            while not until(seen, watch) and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await session.close()
    return seen


def test_a_paged_list_then_watch_events_in_order_from_the_lists_version() -> None:
    script = Script()
    script.lists = [[[cm("a", "1"), cm("b", "2")], [cm("c", "3")]]]
    script.watches = [
        [
            {
                "type": "MODIFIED",
                "object": {**cm("a", "4"), "kind": "ConfigMap", "apiVersion": "v1"},
            },
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}},
            {"type": "DELETED", "object": cm("b", "10")},
        ],
        [],
    ]
    seen = asyncio.run(follow(script, lambda seen, w: len(seen) >= 5 and len(script.requests) >= 4))
    assert seen[:5] == [
        ("ADDED", "a", "ConfigMap"),
        ("ADDED", "b", "ConfigMap"),
        ("ADDED", "c", "ConfigMap"),
        ("MODIFIED", "a", "ConfigMap"),
        ("DELETED", "b", "ConfigMap"),
    ]
    lists = [r for r in script.requests if r.get("watch") != "true"]
    watches = [r for r in script.requests if r.get("watch") == "true"]
    assert [r.get("continue") for r in lists] == [None, "1"]
    assert all(r["labelSelector"] == "a=b" and r["limit"] == "2" for r in lists)
    assert watches[0]["resourceVersion"] == "list-1"
    assert watches[0]["allowWatchBookmarks"] == "true"
    assert watches[1]["resourceVersion"] == "10", "a new watch goes on from the last version"


def test_gone_relists_and_reports_what_vanished_meanwhile_as_deleted() -> None:
    script = Script()
    script.lists = [[[cm("a", "1"), cm("b", "2")]], [[cm("a", "5")]]]
    script.watches = [[{"type": "ERROR", "object": {"code": 410, "reason": "Expired"}}]]
    seen = asyncio.run(follow(script, lambda seen, w: len(seen) >= 4))
    assert seen[:4] == [
        ("ADDED", "a", "ConfigMap"),
        ("ADDED", "b", "ConfigMap"),
        ("ADDED", "a", "ConfigMap"),
        ("DELETED", "b", "ConfigMap"),
    ]


def test_a_resource_not_served_counts_as_listed_and_is_asked_for_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(watch_module, "FIRST_BACKOFF", 0.01)
    script = Script()
    script.missing = True
    synced: list[bool] = []

    def until(seen: list[Any], watch: Watch) -> bool:
        synced.append(watch.synced.is_set())
        return len(script.requests) >= 2

    asyncio.run(follow(script, until))
    assert synced[-1], "an add-on that is not installed does not hold up reconciling"
    assert len(script.requests) >= 2
