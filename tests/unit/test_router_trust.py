"""The router's --upstream-ca is read again: new certificates (openssl-made) are trusted at
once and the ones they replaced for a grace period (a clock the test moves), then no more;
what does not parse is refused once and changes nothing. The upstream pool takes new TLS
settings for new connections and closes the ones verified with the previous settings, against
a real TLS server on loopback."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from marfleet.runtime.router.trust import MAX_BUNDLES, UpstreamTrust
from marfleet.runtime.router.upstream import Timeouts, UpstreamError, UpstreamPool, upstream_tls
from marfleet.runtime.server.certificates import MAX_PEM_BYTES

from tests.certificates import self_signed

REQUEST = b"GET / HTTP/1.1\r\nHost: variant\r\n\r\n"


def certificate(directory: Path, name: str) -> bytes:
    """A self-signed certificate for 127.0.0.1 (its own CA); its key beside it."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    self_signed(cert, key, name=name, ec=True)
    return cert.read_bytes()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class CaFile:
    """A CA file holding a fresh certificate, `first`, and the trust read from it: the
    bundles it handed on (`changes`) and its clock, with a 600 s grace period."""

    path: Path
    first: bytes
    trust: UpstreamTrust
    changes: list[bytes]
    clock: Clock


def ca_file(tmp_path: Path, name: str = "first") -> CaFile:
    path = tmp_path / "ca.crt"
    path.write_bytes(first := certificate(tmp_path, name))
    changes: list[bytes] = []
    clock = Clock()
    trust = UpstreamTrust(path, first, changes.append, grace=600, clock=clock)
    return CaFile(path, first, trust, changes, clock)


def renewed(tmp_path: Path) -> tuple[Path, bytes, bytes, UpstreamTrust, list[bytes], Clock]:
    """A CA file holding `first`, trusted with a 600 s grace, then renewed to `second`."""
    ca = ca_file(tmp_path)
    ca.path.write_bytes(second := certificate(tmp_path, "second"))
    assert ca.trust.reload() is True
    return ca.path, ca.first, second, ca.trust, ca.changes, ca.clock


def test_new_certificates_are_trusted_and_garbage_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca = ca_file(tmp_path)
    path, first, trust, changes = ca.path, ca.first, ca.trust, ca.changes
    assert trust.reload() is False
    path.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with caplog.at_level(logging.WARNING):
        assert trust.reload() is False
        assert trust.reload() is False
    assert len([r for r in caplog.records if "not reloaded" in r.getMessage()]) == 1
    assert changes == [] and trust.pem == first
    path.write_bytes(second := certificate(tmp_path, "second"))
    assert trust.reload() is True
    assert changes == [first + second] and trust.pem == first + second


def test_a_replaced_ca_is_trusted_for_the_grace_period_and_then_no_more(tmp_path: Path) -> None:
    path, first, second, trust, changes, clock = renewed(tmp_path)
    clock.now += 599
    assert trust.reload() is False and trust.pem == first + second
    clock.now += 1
    assert trust.reload() is True
    assert changes == [first + second, second] and trust.pem == second
    # an unreadable file keeps the current CA trusted, however long it lasts
    path.unlink()
    clock.now += 10_000
    assert trust.reload() is False and trust.pem == second


def test_a_ca_that_comes_back_is_current_again(tmp_path: Path) -> None:
    path, first, second, trust, changes, clock = renewed(tmp_path)
    clock.now += 300
    path.write_bytes(first)  # rolled back
    assert trust.reload() is True and trust.pem == second + first
    clock.now += 600  # the second was replaced 600 s ago: its grace is over, the first stays
    assert trust.reload() is True and trust.pem == first
    assert changes[-1] == first


def test_the_replaced_bundles_kept_are_bounded(tmp_path: Path) -> None:
    ca = ca_file(tmp_path, "c0")
    path, trust = ca.path, ca.trust
    made = [ca.first]
    for index in range(1, MAX_BUNDLES + 3):
        path.write_bytes(pem := certificate(tmp_path, f"c{index}"))
        made.append(pem)
        assert trust.reload() is True
    assert trust.pem == b"".join(made[-(MAX_BUNDLES + 1) :])


def test_a_ca_file_over_the_pem_bound_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca = ca_file(tmp_path)
    ca.path.write_bytes(certificate(tmp_path, "second") + b"\n" * MAX_PEM_BYTES)
    with caplog.at_level(logging.WARNING):
        assert ca.trust.reload() is False
    assert "larger than" in str(caplog.records[-1].__dict__["error"])
    assert ca.trust.pem == ca.first and ca.changes == []


def test_the_pool_verifies_new_connections_with_new_settings_and_closes_the_old_ones(
    tmp_path: Path,
) -> None:
    """A server whose certificate is A; the pool trusts A, then only B (A was dropped: a new
    connection fails verification), then A and B again, then B only. A request in flight when
    the settings change is answered and its connection closed after; an idle one is closed
    at once."""
    a, b = certificate(tmp_path, "a"), certificate(tmp_path, "b")
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(tmp_path / "a.crt", tmp_path / "a.key")

    async def scenario() -> tuple[Counter[str], UpstreamError]:
        seen: Counter[str] = Counter()
        hold = asyncio.Event()
        hold.set()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen["connections"] += 1
            try:
                while await reader.readuntil(b"\r\n\r\n"):
                    await hold.wait()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
                pass
            finally:
                seen["closed"] += 1
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=served)
        port = server.sockets[0].getsockname()[1]
        pool = UpstreamPool(
            f"https://127.0.0.1:{port}", Timeouts(connect=5, response=5), tls=upstream_tls(a)
        )
        try:
            assert (await pool.request(REQUEST)).body == b"ok"
            assert (await pool.request(REQUEST)).body == b"ok"  # kept alive: one connection
            assert seen == {"connections": 1}
            hold.clear()
            in_flight = asyncio.create_task(pool.request(REQUEST))
            await asyncio.sleep(0.2)
            pool.use_tls(upstream_tls(b))
            hold.set()
            assert (await in_flight).body == b"ok"
            await asyncio.sleep(0.2)
            assert seen["closed"] == 1  # verified with A: not kept once answered
            with pytest.raises(UpstreamError) as refused:
                await pool.request(REQUEST)
            pool.use_tls(upstream_tls(a + b))
            assert (await pool.request(REQUEST)).body == b"ok"
            pool.use_tls(upstream_tls(b))  # its connection is idle now: closed at once
            await asyncio.sleep(0.2)
            assert seen["closed"] == 2
            return seen, refused.value
        finally:
            pool.close()
            await asyncio.sleep(0.1)  # the server's handler sees the connection close
            server.close()

    seen, refused = asyncio.run(scenario())
    assert (refused.reason, refused.unsent) == ("connect", True)
    assert "TLS with upstream 127.0.0.1:" in refused.message
    # the refused handshake never reached the server's handler: A's first, then A and B's
    assert seen["connections"] == 2


def test_a_plain_http_pool_takes_no_tls_settings(tmp_path: Path) -> None:
    pool = UpstreamPool("http://127.0.0.1:1", Timeouts())
    with pytest.raises(ValueError, match="plain HTTP"):
        pool.use_tls(upstream_tls(certificate(tmp_path, "a")))
