"""The serving certificate, read again when its files change.

cert-manager (or anyone updating the Secret) replaces the certificate and key in the pod's
volume well before the old certificate expires; a server that read them only at start would
serve the old one until it restarts, and once that one expires every client refuses it. So
the pair is read again every `certificate_reload_interval_seconds`: when either file changed
and the new pair loads, the HTTPS listeners (one SSLContext, loaded again in place: new
handshakes use the new pair, open connections keep theirs) and the gRPC listeners (gRPC's
dynamic credentials ask before each new connection's handshake) serve it from then on.

A pair that does not load (one file already written and the other not yet, a key that does
not belong to the certificate) is not taken: the previous pair goes on being served, a warning
says why (once per content seen), and the next look tries again. The bytes that were checked
are the bytes that are loaded (both loads read them from memory files), so a file that changes
between the check and the load cannot put a half-new pair into the live context.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

log = logging.getLogger("marfleet.server")

MAX_PEM_BYTES = 1024 * 1024
"""A certificate chain, key or CA file is read whole, again and again: a Kubernetes Secret holds
at most 1 MiB, and nothing larger is a PEM file anyone means."""


def read_pem(path: Path) -> bytes:
    """The file's bytes; OSError when it cannot be read or is over MAX_PEM_BYTES."""
    with path.open("rb") as file:
        data = file.read(MAX_PEM_BYTES + 1)
    if len(data) > MAX_PEM_BYTES:
        raise OSError(f"{path} is larger than {MAX_PEM_BYTES} bytes: not a PEM file")
    return data


@dataclass(frozen=True)
class _Pair:
    certificate: bytes
    key: bytes

    def fingerprint(self) -> str:
        """SHA-256 of the (first) certificate, as `openssl x509 -fingerprint -sha256` shows."""
        try:
            der = ssl.PEM_cert_to_DER_cert(self.certificate.decode("ascii", "replace"))
        except ValueError:
            return ""
        return hashlib.sha256(der).hexdigest()


class CertificateError(Exception):
    """The certificate and key files cannot be read or do not make a TLS certificate."""


class ServingCertificate:
    """The certificate chain and key every TLS listener of the server serves."""

    def __init__(self, certificate_file: Path, private_key_file: Path) -> None:
        self._files = (certificate_file, private_key_file)
        try:
            pair = self._read()
        except OSError as error:
            raise CertificateError(self._describe(f"cannot be read ({error})")) from None
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            _load(self.context, pair)
        except ssl.SSLError as error:
            raise CertificateError(
                self._describe(f"cannot be used as a TLS certificate and key ({error})")
            ) from None
        self._pair = pair
        self._refused: _Pair | str | None = None  # the last pair (or read error) not taken

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """Credentials for one gRPC listener (each needs its own) that follow the pair this
        object serves: gRPC calls their fetcher on its own threads before each new
        connection's handshake, and it answers the pair to serve from then on, or None to
        keep the one the listener has."""
        served = self._pair

        def configuration() -> grpc.ServerCertificateConfiguration | None:
            nonlocal served
            pair = self._pair
            if pair is served:
                return None
            served = pair
            return grpc.ssl_server_certificate_configuration([(pair.key, pair.certificate)])

        initial = grpc.ssl_server_certificate_configuration([(served.key, served.certificate)])
        return grpc.dynamic_ssl_server_credentials(initial, configuration)

    def reload(self) -> bool:
        """Read the files again and serve the pair when it changed and loads; True if it did."""
        try:
            pair = self._read()
        except OSError as error:
            self._refuse(str(error), f"cannot be read ({error})")
            return False
        if pair in (self._pair, self._refused):
            return False
        try:
            _load(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH), pair)
        except ssl.SSLError as error:
            self._refuse(pair, f"do not make a TLS certificate and key ({error})")
            return False
        _load(self.context, pair)  # the bytes just checked: this cannot fail halfway
        self._pair, self._refused = pair, None
        log.info(
            "serving certificate reloaded",
            extra={"certificate_file": str(self._files[0]), "sha256": pair.fingerprint()},
        )
        return True

    async def watch(self, interval: float) -> None:
        """Reload every `interval` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            self.reload()

    def _read(self) -> _Pair:
        certificate_file, private_key_file = self._files
        return _Pair(read_pem(certificate_file), read_pem(private_key_file))

    def _refuse(self, what: _Pair | str, why: str) -> None:
        if what == self._refused:
            return
        self._refused = what
        log.warning(
            "serving certificate not reloaded: the previous one is served until the files "
            "make a certificate and key",
            extra={"error": self._describe(why)},
        )

    def _describe(self, what: str) -> str:
        certificate_file, private_key_file = self._files
        return f"certificate_file={certificate_file}, private_key_file={private_key_file}: {what}"


def _load(context: ssl.SSLContext, pair: _Pair) -> None:
    with _memory_file(pair.certificate) as certificate, _memory_file(pair.key) as key:
        context.load_cert_chain(certificate, key)


@contextlib.contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    """`data` as a file only this process can open (no copy of the key on any disk)."""
    fd = os.memfd_create("marfleet-tls", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)
