"""The router's upstream pool spreads requests over every address its host name resolves to.

A variant's Service is headless, so its name resolves to one address per ready pod. Here each
"pod" is a real HTTP server on its own loopback address (127.0.0.2, 127.0.0.3, ...), all on
one port. The name service is the one thing replaced: a resolver that answers what the test
says, because making a name resolve to several loopback addresses, or stop resolving, needs a
DNS server this machine does not run. The real name service is used by the last test and by
the real-node scenario (CoreDNS, tests/integration/test_realnode_scenario.py)."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from marfleet.runtime.router.upstream import Timeouts, UpstreamError, UpstreamPool

REQUEST = b"GET / HTTP/1.1\r\nHost: variant\r\n\r\n"


@dataclass
class Pods:
    """HTTP servers on loopback addresses sharing one port; each answers with its address."""

    port: int = 0
    servers: dict[str, asyncio.Server] = field(default_factory=dict)
    connections: Counter[str] = field(default_factory=Counter)
    closed: Counter[str] = field(default_factory=Counter)

    async def start(self, address: str) -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections[address] += 1
            try:
                while await reader.readuntil(b"\r\n\r\n"):
                    body = address.encode()
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                    )
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                self.closed[address] += 1
                writer.close()

        server = await asyncio.start_server(serve, address, self.port)
        self.port = self.port or server.sockets[0].getsockname()[1]
        self.servers[address] = server

    def close(self) -> None:
        for server in self.servers.values():
            server.close()


@asynccontextmanager
async def pods(*addresses: str) -> AsyncIterator[Pods]:
    running = Pods()
    for address in addresses:
        await running.start(address)
    try:
        yield running
    finally:
        running.close()


class Names:
    """The name service's answers for the test's one host name (mutable)."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = list(addresses)
        self.failure: OSError | None = None
        self.asked = 0

    async def __call__(self, host: str, port: int) -> list[str]:
        assert host == "variant.shop.svc"
        self.asked += 1
        if self.failure is not None:
            raise self.failure
        return list(self.addresses)


def pool(port: int, names: Names, resolve_every: float = 60.0) -> UpstreamPool:
    return UpstreamPool(
        f"http://variant.shop.svc:{port}",
        Timeouts(connect=2.0, response=5.0),
        resolve=names,
        resolve_every=resolve_every,
    )


async def answers(upstream: UpstreamPool, count: int) -> list[str]:
    return [(await upstream.request(REQUEST)).body.decode() for _ in range(count)]


def test_requests_take_turns_over_the_addresses_on_kept_alive_connections() -> None:
    async def scenario() -> tuple[list[str], Counter[str], int]:
        async with pods("127.0.0.2", "127.0.0.3") as running:
            names = Names("127.0.0.2", "127.0.0.3")
            upstream = pool(running.port, names)
            got = await answers(upstream, 6)
            upstream.close()
            return got, running.connections, names.asked

    got, connections, asked = asyncio.run(scenario())
    assert got == ["127.0.0.2", "127.0.0.3"] * 3
    # one connection per address, kept alive: balancing is per request, not per connection
    assert connections == {"127.0.0.2": 1, "127.0.0.3": 1}
    assert asked == 1


def test_an_address_that_refuses_is_passed_over_and_the_request_still_answered() -> None:
    async def scenario() -> list[str]:
        async with pods("127.0.0.2") as running:
            upstream = pool(running.port, Names("127.0.0.4", "127.0.0.2"))  # .4: no server
            got = await answers(upstream, 4)
            upstream.close()
            return got

    assert asyncio.run(scenario()) == ["127.0.0.2"] * 4


def test_every_address_refusing_is_an_unsent_connect_error() -> None:
    async def scenario() -> UpstreamError:
        upstream = pool(free_port(), Names("127.0.0.4", "127.0.0.5"))
        with pytest.raises(UpstreamError) as caught:
            await upstream.request(REQUEST)
        return caught.value

    error = asyncio.run(scenario())
    assert (error.reason, error.unsent) == ("connect", True)  # the router may send it elsewhere
    assert "cannot connect to upstream variant.shop.svc:" in error.message


def test_an_address_gone_from_the_name_gets_no_more_requests_and_its_connections_close() -> None:
    async def scenario() -> tuple[list[str], list[str], Counter[str]]:
        async with pods("127.0.0.2", "127.0.0.3") as running:
            names = Names("127.0.0.2", "127.0.0.3")
            upstream = pool(running.port, names, resolve_every=0.0)  # resolved every request
            before = await answers(upstream, 2)
            names.addresses = ["127.0.0.3"]  # the pod at .2 is going away
            after = await answers(upstream, 3)
            await asyncio.sleep(0.1)
            closed = running.closed.copy()  # before the pool itself is closed
            upstream.close()
            return before, after, closed

    before, after, closed = asyncio.run(scenario())
    assert before == ["127.0.0.2", "127.0.0.3"]
    assert after == ["127.0.0.3"] * 3
    assert closed["127.0.0.2"] == 1


def test_a_name_that_no_longer_exists_fails_but_a_failing_name_service_keeps_the_addresses() -> (
    None
):
    async def scenario() -> tuple[list[str], UpstreamError]:
        async with pods("127.0.0.2") as running:
            names = Names("127.0.0.2")
            upstream = pool(running.port, names, resolve_every=0.0)
            await answers(upstream, 1)
            names.failure = socket.gaierror(socket.EAI_AGAIN, "Temporary failure")
            kept = await answers(upstream, 2)
            names.failure = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            with pytest.raises(UpstreamError) as caught:
                await upstream.request(REQUEST)
            upstream.close()
            return kept, caught.value

    kept, error = asyncio.run(scenario())
    assert kept == ["127.0.0.2"] * 2
    assert (error.reason, error.unsent) == ("connect", True)
    assert error.message.startswith("cannot resolve upstream variant.shop.svc:")
    assert error.message.endswith(": Name or service not known")


def test_the_system_name_service_resolves_a_real_name() -> None:
    async def scenario() -> list[str]:
        async with pods("127.0.0.1") as running:
            upstream = UpstreamPool(f"http://localhost:{running.port}", Timeouts())
            got = await answers(upstream, 2)
            upstream.close()
            return got

    assert asyncio.run(scenario()) == ["127.0.0.1"] * 2


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
