"""Fetch one model archive (or a folder of objects) into a directory, atomically.

Runs as the init container of every model-server pod, and behind the management API's
registration by URL (runtime/server/model_source.py), so there is one downloader: `fetch`
with a `FetchSettings` that carries the limits (size cap, overall deadline, stall timeout)
and a `cancelled` callback a caller flips when its client went away.

It retries what can be retried (connection errors, timeouts, 408/429/5xx, truncated bodies),
gives up at once on what cannot (404, refused credentials, a wrong checksum, a limit), reports
progress while it goes, and only renames a complete, verified file into place, so the server
never sees half an archive. Where the events go is the caller's choice (`Reporter`), which
keeps this module free of logging configuration and lets tests read the events.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cache import NodeCache
from .limits import Budget, FetchError, Retryable
from .objects import ObjectSource, StoreOptions
from .sources import CHUNK, Entry, HttpSource, LocalSource, Source
from .uri import OBJECT_STORE_SCHEMES, ModelURI, ModelURIError, archive_filename, parse

__all__ = ["FetchError", "FetchSettings", "StoreOptions", "fetch"]

Reporter = Callable[[str, dict[str, Any]], None]
"""Receives (event, fields) for every step: start, progress, retry, done, present, cache-hit."""

FILE_MODE = 0o640
DIR_MODE = 0o750


@dataclass(frozen=True)
class FetchSettings:
    attempts: int = 5
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 30.0
    timeout_seconds: float = 30.0
    """Connecting (and, for HTTP, each handshake) may take this long."""
    stall_seconds: float = 60.0
    """The longest wait for the next bytes of a response before the attempt fails."""
    deadline_seconds: float = 3600.0
    """The whole fetch, all attempts and retries together."""
    max_bytes: int = 20 << 30
    """The most bytes the fetched archive (or all files of a prefix) may have."""
    max_redirects: int = 5
    progress_interval_seconds: float = 5.0
    pvc_root: Path = Path("/mnt/pvc")
    store: StoreOptions = field(default_factory=StoreOptions)
    cache_dir: Path | None = None
    """A node-wide cache of fetched models (the operator mounts it when the chart sets one)."""
    cache_max_bytes: int = 100 << 30
    cancelled: Callable[[], bool] = field(default=lambda: False, compare=False)
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)


def fetch(
    uri: str,
    dest_dir: Path,
    *,
    sha256: str | None,
    settings: FetchSettings,
    report: Reporter,
) -> Path:
    """Place what `uri` names at dest_dir/<archive_filename(uri)>; return that path."""
    source_uri = parse(uri)
    expected = sha256.lower() if sha256 else None
    if expected is not None and source_uri.is_prefix:
        raise ModelURIError(
            f"model URI {source_uri.redacted} names a folder: model.sha256 applies to a single "
            "archive; leave it empty or point model.uri at the archive"
        )
    target = dest_dir / archive_filename(uri)
    if _present(target, expected, report):
        return target
    dest_dir.mkdir(parents=True, exist_ok=True)
    budget = Budget(settings.max_bytes, settings.deadline_seconds, settings.cancelled)
    report("start", {"uri": source_uri.redacted, "path": str(target)})
    started = time.monotonic()
    cache = NodeCache.open(settings.cache_dir, settings.cache_max_bytes, report)
    identity = _identity(source_uri, settings)
    if cache is not None and expected is not None:
        with cache.locked(identity, expected, budget):
            if cache.copy_to(identity, expected, target, expected):
                return _done(report, target, started, "cache-hit")
            return _fetch_into(source_uri, target, expected, settings, budget, report, cache)
    return _fetch_into(source_uri, target, expected, settings, budget, report, cache)


def _fetch_into(
    uri: ModelURI,
    target: Path,
    expected: str | None,
    settings: FetchSettings,
    budget: Budget,
    report: Reporter,
    cache: NodeCache | None,
) -> Path:
    started = time.monotonic()
    source = _source(uri, settings, budget)
    try:
        entries = _with_retries(lambda: source.entries(budget), uri, settings, budget, report)
        version = "\n".join(f"{e.name}\0{e.version}" for e in entries)
        identity = _identity(uri, settings)
        versioned = cache is not None and expected is None and all(e.version for e in entries)
        if cache is not None and versioned:
            with cache.locked(identity, version, budget):
                if cache.copy_to(identity, version, target, None):
                    return _done(report, target, started, "cache-hit")
                digest = _download(source, uri, entries, target, expected, settings, budget, report)
                cache.store(identity, version, target)
        else:
            digest = _download(source, uri, entries, target, expected, settings, budget, report)
            if cache is not None and expected is not None:
                cache.store(identity, expected, target)
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()
    report(
        "done",
        {
            "path": str(target),
            "bytes": budget.used_bytes,
            "files": len(entries),
            **({"sha256": digest} if digest else {}),
            "seconds": _since(started),
        },
    )
    return target


def _download(
    source: Source,
    uri: ModelURI,
    entries: list[Entry],
    target: Path,
    expected: str | None,
    settings: FetchSettings,
    budget: Budget,
    report: Reporter,
) -> str:
    """Stage every entry beside target, verify, then rename into place; return the digest of
    a single archive ("" for a folder)."""
    sizes = [e.size for e in entries if e.size is not None]
    total = sum(sizes) if len(sizes) == len(entries) else None
    budget.expect(total, uri.redacted)
    progress = _Progress(report, total, settings.progress_interval_seconds)
    if not uri.is_prefix:
        with _staged_file(target) as staging:
            digest = _with_retries(
                lambda: _stream_to(source, entries[0], staging, budget, progress, uri),
                uri,
                settings,
                budget,
                report,
            )
            if expected is not None and digest != expected:
                raise FetchError(
                    f"sha256 mismatch for {uri.redacted}: expected {expected}, got "
                    f"{digest}; the archive changed or model.sha256 is wrong. Nothing was placed"
                )
        return digest
    with _staged_dir(target) as staging:
        for entry in entries:
            path = staging / entry.name
            path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            _with_retries(
                lambda entry=entry, path=path: _stream_to(  # type: ignore[misc]
                    source, entry, path, budget, progress, uri
                ),
                uri,
                settings,
                budget,
                report,
            )
    return ""


def _stream_to(
    source: Source, entry: Entry, path: Path, budget: Budget, progress: _Progress, uri: ModelURI
) -> str:
    """One attempt at one entry: write it to `path` (truncating what an earlier attempt left)
    and return its sha256. Raises Retryable for a body that ended early."""
    mark, done_mark = budget.used_bytes, progress.done
    digest = hashlib.sha256()
    what = f"{uri.redacted}{'/' + entry.name if entry.name else ''}"
    try:
        with source.open(entry, budget) as stream, path.open("wb") as writer:
            os.chmod(path, FILE_MODE)
            received = 0
            for chunk in stream.chunks:
                received += len(chunk)
                budget.add(len(chunk), what)
                writer.write(chunk)
                digest.update(chunk)
                progress.add(len(chunk))
            if stream.total is not None and received != stream.total:
                raise Retryable(f"body ended after {received} of {stream.total} bytes")
            writer.flush()
            os.fsync(writer.fileno())
        if not stream.self_delimiting and not _looks_complete(path):
            raise Retryable(
                f"the body ended after {received} bytes without Content-Length or chunked "
                "framing and is not a complete archive (the connection was cut?)"
            )
    except BaseException:
        budget.used_bytes, progress.done = mark, done_mark
        raise
    return digest.hexdigest()


def _looks_complete(path: Path) -> bool:
    """For a body whose end cannot be told from a cut: a zip (.mar) must have its central
    directory, a gzip stream (.tar.gz) its trailer; other formats cannot be checked."""
    with path.open("rb") as reader:
        magic = reader.read(2)
        if magic == b"PK":
            return zipfile.is_zipfile(path)
        if magic != b"\x1f\x8b":
            return False
        reader.seek(0)
        decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        while chunk := reader.read(CHUNK):
            decompressor.decompress(chunk, 0)
            while decompressor.unconsumed_tail:
                decompressor.decompress(decompressor.unconsumed_tail, 0)
        return decompressor.eof


def _with_retries(
    attempt: Callable[[], Any],
    uri: ModelURI,
    settings: FetchSettings,
    budget: Budget,
    report: Reporter,
) -> Any:
    for number in range(1, settings.attempts + 1):
        budget.check_time()
        try:
            return attempt()
        except Retryable as error:
            if number == settings.attempts:
                raise FetchError(
                    f"giving up on {uri.redacted} after {number} attempts: {error}"
                ) from None
            delay = min(
                error.retry_after
                if error.retry_after is not None
                else settings.backoff_seconds * 2 ** (number - 1),
                settings.max_backoff_seconds,
                max(budget.remaining(), 0.0),
            )
            report("retry", {"attempt": number, "error": str(error), "delay": delay})
            settings.sleep(delay)
    raise FetchError(f"{uri.redacted}: no download attempts configured (attempts < 1)")


def _source(uri: ModelURI, settings: FetchSettings, budget: Budget) -> Source:
    if uri.scheme in ("http", "https"):
        return HttpSource(
            uri, settings.timeout_seconds, settings.stall_seconds, settings.max_redirects
        )
    if uri.scheme in OBJECT_STORE_SCHEMES:
        return ObjectSource(
            uri, settings.store, settings.timeout_seconds, settings.stall_seconds, budget
        )
    return LocalSource(uri, settings.pvc_root)


def _identity(uri: ModelURI, settings: FetchSettings) -> str:
    """What names the same bytes in the node cache besides their version: the URI without
    secrets, and the endpoint for object stores (one bucket name, two stores)."""
    endpoint = settings.store.endpoint if uri.scheme in OBJECT_STORE_SCHEMES else ""
    return f"{uri.redacted}\n{endpoint}"


def _present(target: Path, expected: str | None, report: Reporter) -> bool:
    """Whether target is already what we want. A file that does not match model.sha256 is
    left where it is until a verified download replaces it."""
    if target.is_dir() or (target.is_file() and expected is None):
        report("present", {"path": str(target)})
        return True
    if target.is_file() and expected is not None:
        actual = file_digest(target)
        if actual == expected:
            report("present", {"path": str(target)})
            return True
        report("mismatch", {"path": str(target), "sha256": actual, "expected": expected})
    return False


def _done(report: Reporter, target: Path, started: float, event: str) -> Path:
    report(event, {"path": str(target), "seconds": _since(started)})
    return target


@contextlib.contextmanager
def _staged_file(target: Path) -> Iterator[Path]:
    """A temporary file beside target, renamed onto it only if the block completes."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    temp = Path(name)
    try:
        yield temp
        temp.chmod(FILE_MODE)
        os.replace(temp, target)
        _fsync_dir(target.parent)
    finally:
        temp.unlink(missing_ok=True)


@contextlib.contextmanager
def _staged_dir(target: Path) -> Iterator[Path]:
    """A temporary folder beside target, renamed to it only if the block completes."""
    temp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent))
    try:
        yield temp
        temp.chmod(DIR_MODE)
        os.replace(temp, target)
        _fsync_dir(target.parent)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Progress:
    """Counts bytes, reporting at most every `interval` seconds."""

    def __init__(self, report: Reporter, total: int | None, interval: float) -> None:
        self.report = report
        self.total = total
        self.interval = interval
        self.done = 0
        self.started = self.last = time.monotonic()

    def add(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            fields: dict[str, Any] = {"bytes": self.done, "total": self.total}
            if self.total:
                fields["percent"] = round(100 * self.done / self.total, 1)
            fields["mib_per_s"] = round(self.done / (1 << 20) / max(now - self.started, 1e-9), 2)
            self.report("progress", fields)


def file_digest(path: Path) -> str:
    with path.open("rb") as reader:
        return hashlib.file_digest(reader, "sha256").hexdigest()


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)
