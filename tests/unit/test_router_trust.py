"""The router's --upstream-ca is read again: new certificates (openssl-made) are trusted as
well as the previous ones, over HTTP in place and over gRPC through `on_change`; what does not
parse is refused once and changes nothing."""

from __future__ import annotations

import logging
import ssl
import subprocess
from pathlib import Path

import pytest
from marfleet.runtime.router.trust import MAX_BUNDLES, UpstreamTrust
from marfleet.runtime.router.upstream import upstream_tls
from marfleet.runtime.server.certificates import MAX_PEM_BYTES


def certificate(directory: Path, name: str) -> bytes:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt"),
            *("ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", f"/CN={name}"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert.read_bytes()


def trusted_names(context: ssl.SSLContext) -> set[str]:
    """The common names of the CA certificates `context` verifies with."""
    names = set()
    for ca in context.get_ca_certs():
        for rdn in ca["subject"]:
            names |= {str(pair[1]) for pair in rdn if pair[0] == "commonName"}
    return names


def test_new_certificates_are_trusted_as_well_and_garbage_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ca.crt"
    path.write_bytes(first := certificate(tmp_path, "first"))
    context = upstream_tls(first)
    bundles: list[bytes] = []
    trust = UpstreamTrust(path, first, context, bundles.append)
    assert trust.reload() is False
    path.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with caplog.at_level(logging.WARNING):
        assert trust.reload() is False
        assert trust.reload() is False
    assert len([r for r in caplog.records if "not reloaded" in r.getMessage()]) == 1
    assert bundles == [] and trusted_names(context) == {"first"}
    path.write_bytes(second := certificate(tmp_path, "second"))
    assert trust.reload() is True
    assert trusted_names(context) == {"first", "second"}
    assert bundles == [first + second] and trust.pem == first + second


def test_the_bundles_handed_to_grpc_are_bounded(tmp_path: Path) -> None:
    path = tmp_path / "ca.crt"
    path.write_bytes(first := certificate(tmp_path, "c0"))
    trust = UpstreamTrust(path, first, upstream_tls(first), lambda _pem: None)
    made = [first]
    for index in range(1, MAX_BUNDLES + 2):
        path.write_bytes(pem := certificate(tmp_path, f"c{index}"))
        made.append(pem)
        assert trust.reload() is True
    assert trust.pem == b"".join(made[-MAX_BUNDLES:])


def test_a_ca_file_over_the_pem_bound_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ca.crt"
    path.write_bytes(first := certificate(tmp_path, "first"))
    trust = UpstreamTrust(path, first, upstream_tls(first), lambda _pem: None)
    path.write_bytes(certificate(tmp_path, "second") + b"\n" * MAX_PEM_BYTES)
    with caplog.at_level(logging.WARNING):
        assert trust.reload() is False
    assert "larger than" in str(caplog.records[-1].__dict__["error"])
    assert trust.pem == first
