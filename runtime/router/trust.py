"""The CA certificates the router verifies https:// variants with, read again when the file
changes.

The model servers take a renewed certificate without a restart (runtime/server/certificates.py).
Where the variants' certificate is its own CA (`caKey: tls.crt`, a self-signed certificate),
a renewal changes what the router must trust, and for a while some server pods serve the old
certificate and some the new one (each reads its files on its own clock). So the router reads
`--upstream-ca` again every `interval` seconds and, when it holds new certificates that parse,
trusts them as well as those it trusted before: over HTTP the one client SSLContext every
upstream pool shares takes them in place (new connections verify with them; open ones stay),
and over gRPC the TLS variants' channels are made again with every bundle trusted so far (the
previous channels close once their calls have finished). A CA once trusted stays trusted
until the router restarts; at most `MAX_BUNDLES` bundles are kept, the oldest beyond that
trusted by HTTP only. A file that does not parse is not taken, with one warning per content.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from pathlib import Path

from marfleet.runtime.server.certificates import read_pem

log = logging.getLogger("marfleet.router")

MAX_BUNDLES = 16
"""CA bundles kept for the gRPC channels: a renewal a month is over a year of them."""


class UpstreamTrust:
    """`--upstream-ca` as it was and as it became; `on_change` gets every bundle trusted."""

    def __init__(
        self,
        path: Path,
        initial: bytes,
        context: ssl.SSLContext,
        on_change: Callable[[bytes], None],
    ) -> None:
        """`initial`: the file's content when `context` was made with it."""
        self._path = path
        self._context = context
        self._on_change = on_change
        self._bundles: list[bytes] = [initial]
        self._refused: bytes | str = b""

    @property
    def pem(self) -> bytes:
        """Every bundle trusted so far, concatenated (what a gRPC channel is given)."""
        return b"".join(self._bundles)

    def reload(self) -> bool:
        """Read the file again; trust what it holds when it is new and parses. True if so."""
        try:
            pem = read_pem(self._path)
        except OSError as error:
            self._refuse(str(error), f"cannot be read ({error})")
            return False
        if pem in self._bundles or pem == self._refused:
            return False
        try:
            ssl.create_default_context(cadata=pem.decode("ascii"))
        except (UnicodeDecodeError, ssl.SSLError, ValueError) as error:
            self._refuse(pem, f"is not PEM CA certificates ({error})")
            return False
        self._context.load_verify_locations(cadata=pem.decode("ascii"))
        self._bundles = [*self._bundles, pem][-MAX_BUNDLES:]
        self._refused = b""
        log.info(
            "upstream CA reloaded: the new certificates are trusted as well as the previous",
            extra={"file": str(self._path), "bundles": len(self._bundles)},
        )
        self._on_change(self.pem)
        return True

    async def watch(self, interval: float) -> None:
        """Reload every `interval` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            self.reload()

    def _refuse(self, what: bytes | str, why: str) -> None:
        if what == self._refused:
            return
        self._refused = what
        log.warning(
            "upstream CA not reloaded: the certificates trusted so far stay trusted",
            extra={"error": f"--upstream-ca {self._path}: {why}"},
        )
