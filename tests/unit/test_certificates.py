"""The serving certificate is read again when its files change: real certificates (openssl),
real TLS handshakes on loopback (asyncio and a gRPC aio server), the way a renewed Secret
reaches a pod (both files replaced, or one of them first)."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from pathlib import Path

import grpc
import pytest
from marfleet.runtime.server.certificates import MAX_PEM_BYTES, CertificateError, ServingCertificate

from tests.certificates import self_signed


def make_pair(directory: Path, name: str) -> tuple[bytes, bytes]:
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    self_signed(cert, key, name=name)
    return cert.read_bytes(), key.read_bytes()


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[bytes, bytes]]:
    directory = tmp_path_factory.mktemp("pairs")
    return {name: make_pair(directory, name) for name in ("old", "new")}


def install(directory: Path, pair: tuple[bytes, bytes]) -> tuple[Path, Path]:
    cert, key = directory / "tls.crt", directory / "tls.key"
    cert.write_bytes(pair[0])
    key.write_bytes(pair[1])
    return cert, key


def served(port: int) -> bytes:
    """The certificate a new TLS connection to `port` is shown (PEM)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return ssl.DER_cert_to_PEM_cert(der).encode()


def same(pem: bytes, other: bytes) -> bool:
    return ssl.PEM_cert_to_DER_cert(pem.decode()) == ssl.PEM_cert_to_DER_cert(other.decode())


def test_https_and_grpc_serve_the_new_pair_once_it_is_read(
    tmp_path: Path, pairs: dict[str, tuple[bytes, bytes]]
) -> None:
    cert, key = install(tmp_path, pairs["old"])
    certificate = ServingCertificate(cert, key)

    async def scenario() -> list[bytes]:
        https = await asyncio.start_server(
            lambda _r, w: w.close(), "127.0.0.1", 0, ssl=certificate.context
        )
        server = grpc.aio.server()
        grpc_port = server.add_secure_port("127.0.0.1:0", certificate.grpc_credentials())
        await server.start()
        https_port = https.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        seen = []
        for port in (https_port, grpc_port):
            seen.append(await loop.run_in_executor(None, served, port))
        assert certificate.reload() is False  # nothing changed
        install(tmp_path, pairs["new"])
        assert certificate.reload() is True
        for port in (https_port, grpc_port):
            seen.append(await loop.run_in_executor(None, served, port))
        await server.stop(0)
        https.close()
        return seen

    https_old, grpc_old, https_new, grpc_new = asyncio.run(scenario())
    old, new = pairs["old"][0], pairs["new"][0]
    assert same(https_old, old) and same(grpc_old, old)
    assert same(https_new, new) and same(grpc_new, new)


def test_a_half_written_pair_is_not_taken_until_it_is_whole(
    tmp_path: Path, pairs: dict[str, tuple[bytes, bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = install(tmp_path, pairs["old"])
    certificate = ServingCertificate(cert, key)
    cert.write_bytes(pairs["new"][0])  # the certificate first; the old key does not match it
    with caplog.at_level(logging.WARNING):
        assert certificate.reload() is False
        assert certificate.reload() is False
    refusals = [r for r in caplog.records if "not reloaded" in r.getMessage()]
    assert len(refusals) == 1, "one warning per content seen"
    assert "do not make a TLS certificate and key" in str(refusals[0].__dict__["error"])
    key.unlink()  # on its way
    with caplog.at_level(logging.WARNING):
        assert certificate.reload() is False
    assert "cannot be read" in str(caplog.records[-1].__dict__["error"])
    key.write_bytes(pairs["new"][1])
    assert certificate.reload() is True

    async def shown() -> bytes:
        https = await asyncio.start_server(
            lambda _r, w: w.close(), "127.0.0.1", 0, ssl=certificate.context
        )
        port = https.sockets[0].getsockname()[1]
        pem = await asyncio.get_running_loop().run_in_executor(None, served, port)
        https.close()
        return pem

    assert same(asyncio.run(shown()), pairs["new"][0])


def test_a_pair_that_does_not_load_at_start_names_both_files(
    tmp_path: Path, pairs: dict[str, tuple[bytes, bytes]]
) -> None:
    cert, key = install(tmp_path, pairs["old"])
    key.write_bytes(pairs["new"][1])
    with pytest.raises(CertificateError, match="cannot be used as a TLS certificate and key"):
        ServingCertificate(cert, key)
    with pytest.raises(CertificateError, match=f"private_key_file={tmp_path / 'no.key'}"):
        ServingCertificate(cert, tmp_path / "no.key")


def test_a_file_over_the_pem_bound_is_not_read_whole(
    tmp_path: Path, pairs: dict[str, tuple[bytes, bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = install(tmp_path, pairs["old"])
    certificate = ServingCertificate(cert, key)
    cert.write_bytes(pairs["new"][0] + b"\n" * MAX_PEM_BYTES)  # a PEM file would still parse
    with caplog.at_level(logging.WARNING):
        assert certificate.reload() is False
    assert f"larger than {MAX_PEM_BYTES} bytes" in str(caplog.records[-1].__dict__["error"])
    with pytest.raises(CertificateError, match="larger than"):
        ServingCertificate(cert, key)
