"""Where fetched bytes come from: one small class per kind of URI, all with the same shape.

A source lists what a URI names (`entries`: one archive, or the objects under a prefix) and
opens one entry as a stream of chunks. Everything else — retries, limits, staging, checksums,
placement, the node cache — is the same for every source and lives in fetch.py, so an
HTTP download and an S3 object are bounded, verified and placed by the same code.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urljoin, urlsplit

import httpx

from .limits import Budget, FetchError, Retryable
from .uri import ModelURI, redact

CHUNK = 1 << 20
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 3600.0


@dataclass(frozen=True)
class Entry:
    """One file to fetch: `name` is its path inside a prefix ("" for a single archive)."""

    name: str
    size: int | None = None
    version: str = ""
    """The store's ETag or generation, when it has one (a node-cache key without sha256)."""


@dataclass
class Stream:
    chunks: Iterator[bytes]
    total: int | None
    """The announced length; None when the body ends only when the connection closes."""
    self_delimiting: bool = True
    """False for a body without Content-Length or chunked framing: a cut cannot be seen."""


class Source(Protocol):
    def entries(self, budget: Budget) -> list[Entry]: ...

    def open(self, entry: Entry, budget: Budget) -> contextlib.AbstractContextManager[Stream]: ...


class LocalSource:
    """file:// and pvc:// URIs: a copy from a mounted volume (pvc:// stays inside its claim)."""

    def __init__(self, uri: ModelURI, pvc_root: Path) -> None:
        self.uri = uri
        self.pvc_root = pvc_root
        if uri.scheme == "file":
            self.path = Path(uri.path)
        else:
            claim_root = pvc_root / uri.location
            self.path = claim_root / uri.path.lstrip("/")
            resolved = self.path.resolve()
            if not resolved.is_relative_to(claim_root.resolve()):
                raise FetchError(
                    f"{uri.redacted} resolves to {resolved}, outside the claim's volume "
                    f"{claim_root}: a symbolic link may not lead out of the claim"
                )

    def entries(self, budget: Budget) -> list[Entry]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            raise FetchError(
                f"model archive {self.path} does not exist: check the path (for pvc:// URIs "
                f"the claim is mounted at {self.pvc_root}/<claim>)"
            ) from None
        if self.path.is_dir():
            raise FetchError(f"model archive {self.path} is a directory; point the URI at a file")
        return [Entry("", stat.st_size)]

    @contextlib.contextmanager
    def open(self, entry: Entry, budget: Budget) -> Iterator[Stream]:
        try:
            reader = self.path.open("rb")
        except PermissionError:
            raise FetchError(
                f"model archive {self.path} is not readable by uid {os.getuid()}"
            ) from None
        with reader:
            yield Stream(iter(lambda: reader.read(CHUNK), b""), entry.size)


class HttpSource:
    """http(s):// URIs. Redirects are followed by hand so each hop is checked: only http(s),
    at most `max_redirects`, and the limits apply across all of them."""

    def __init__(
        self, uri: ModelURI, connect_seconds: float, stall_seconds: float, max_redirects: int
    ) -> None:
        self.uri = uri
        self.max_redirects = max_redirects
        self.client = httpx.Client(
            follow_redirects=False,
            timeout=httpx.Timeout(connect_seconds, read=stall_seconds),
        )

    def entries(self, budget: Budget) -> list[Entry]:
        return [Entry("")]

    @contextlib.contextmanager
    def open(self, entry: Entry, budget: Budget) -> Iterator[Stream]:
        url = self.uri.raw
        try:
            for _hop in range(self.max_redirects + 1):
                budget.check_time()
                with self.client.stream("GET", url) as response:
                    if response.is_redirect:
                        url = self._next_hop(url, response)
                        continue
                    self._check_status(response)
                    total = _content_length(response)
                    budget.expect(total, redact(self.uri.raw))
                    # h11 itself fails a body shorter than its Content-Length or an unfinished
                    # chunked body; only a body that ends when the connection closes is blind.
                    framed = "content-length" in response.headers or "chunked" in (
                        response.headers.get("transfer-encoding", "").lower()
                    )
                    yield Stream(response.iter_bytes(), total, self_delimiting=framed)
                    return
        except httpx.TransportError as error:
            raise Retryable(f"{type(error).__name__}: {error}") from None
        raise FetchError(
            f"{self.uri.redacted} redirected more than {self.max_redirects} times (a redirect "
            "loop?); point model.uri at the final address"
        )

    def _next_hop(self, url: str, response: httpx.Response) -> str:
        location = response.headers.get("location", "")
        target = urljoin(url, location)
        scheme = urlsplit(target).scheme.lower()
        if not location or scheme not in ("http", "https"):
            raise FetchError(
                f"{self.uri.redacted} redirected to {redact(target) if location else 'nowhere'}: "
                "only http(s) redirects are followed"
            )
        return target

    def _check_status(self, response: httpx.Response) -> None:
        status = response.status_code
        if status < 400:
            return
        if status in RETRYABLE_STATUS:
            raise Retryable(f"HTTP {status}", retry_after(response.headers.get("retry-after")))
        hint = {
            401: "the server wants credentials",
            403: "access is denied",
            404: "no file at that address",
        }.get(status, "the server refused the request")
        raise FetchError(f"HTTP {status} for {self.uri.redacted}: {hint}; check model.uri")

    def close(self) -> None:
        self.client.close()


def retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (0..1 h), or None for an absent, dated or malformed value."""
    text = (value or "").strip()
    if not text.isascii() or not text.isdigit():
        return None
    return min(float(text), MAX_RETRY_AFTER)


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length", "")
    encoded = response.headers.get("content-encoding", "identity") != "identity"
    return int(value) if value.isascii() and value.isdigit() and not encoded else None
