"""The CA certificates the router verifies https:// variants with, read again when the file
changes, and a replaced CA trusted only for a grace period.

The model servers take a renewed certificate without a restart (runtime/server/certificates.py).
Where the variants' certificate is its own CA (`caKey: tls.crt`, a self-signed certificate),
a renewal changes what the router must trust, and for a while some server pods serve the old
certificate and some the new one: each reads its files on its own clock, and the kubelet
updates each pod's Secret volume on its own clock too. So the router reads `--upstream-ca`
again every `interval` seconds and, when it holds new certificates that parse, trusts them
at once, and the ones they replaced for `grace` seconds more (`--upstream-ca-grace-seconds`,
10 minutes: far longer than the kubelet's and the servers' delays). After that a replaced CA
is no longer trusted: a CA taken out of the Secret (say, because its key leaked) stops being
trusted within `grace` plus one interval, without a router restart.

Every change (a CA added or one expired) hands `on_change` the bundles trusted now; the
router makes new TLS settings of them for both transports (new HTTP connections verify with
them and idle ones are closed; the gRPC channels are made again). At most `MAX_BUNDLES`
replaced bundles are kept within the grace period, the oldest dropped first. A file that
cannot be read or does not parse is not taken, with one warning per content; what was
trusted stays trusted, the current bundle included.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from pathlib import Path

from marfleet.runtime.server.certificates import read_pem

log = logging.getLogger("marfleet.router")

MAX_BUNDLES = 16
"""Replaced CA bundles trusted at once within the grace period (renewals come months apart)."""

GRACE_SECONDS = 600.0
"""How long a replaced CA bundle stays trusted: the kubelet updates a Secret volume within a
minute or two, and the servers read their certificate again every 30 s."""


class UpstreamTrust:
    """`--upstream-ca` as it is and, for `grace` seconds, as it was; `on_change` gets the
    bundles trusted whenever they change."""

    def __init__(
        self,
        path: Path,
        initial: bytes,
        on_change: Callable[[bytes], None],
        *,
        grace: float = GRACE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`initial`: the file's content when the router's TLS settings were made of it."""
        self._path = path
        self._on_change = on_change
        self._grace = grace
        self._clock = clock
        self._current = initial
        self._replaced: dict[bytes, float] = {}
        """Bundles the file held before, oldest first -> when each was replaced."""
        self._refused: bytes | str = b""

    @property
    def pem(self) -> bytes:
        """Every bundle trusted now, concatenated: the replaced ones, then the current one."""
        return b"".join([*self._replaced, self._current])

    def reload(self) -> bool:
        """Drop the replaced bundles whose grace period is over, and read the file again,
        trusting what it holds when it is new and parses. True if what is trusted changed."""
        now = self._clock()
        expired = [pem for pem, since in self._replaced.items() if now - since >= self._grace]
        for pem in expired:
            del self._replaced[pem]
        if expired:
            log.info(
                "upstream CA no longer trusted: replaced more than the grace period ago",
                extra={
                    "file": str(self._path),
                    "bundles_dropped": len(expired),
                    "grace_seconds": self._grace,
                },
            )
        taken = self._take(now)
        if expired or taken:
            self._on_change(self.pem)
        return bool(expired or taken)

    def _take(self, now: float) -> bool:
        try:
            pem = read_pem(self._path)
        except OSError as error:
            self._refuse(str(error), f"cannot be read ({error})")
            return False
        if pem == self._current or pem == self._refused:
            return False
        try:
            ssl.create_default_context(cadata=pem.decode("ascii"))
        except (UnicodeDecodeError, ssl.SSLError, ValueError) as error:
            self._refuse(pem, f"is not PEM CA certificates ({error})")
            return False
        self._replaced.pop(pem, None)  # a bundle coming back is current again
        self._replaced[self._current] = now
        while len(self._replaced) > MAX_BUNDLES:
            del self._replaced[next(iter(self._replaced))]
        self._current = pem
        self._refused = b""
        log.info(
            "upstream CA reloaded: the new certificates are trusted, the replaced ones for "
            "the grace period",
            extra={
                "file": str(self._path),
                "bundles": len(self._replaced) + 1,
                "grace_seconds": self._grace,
            },
        )
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
