"""Fetch one model archive into a directory, atomically.

Runs as the init container of every model-server pod, so it has to be boring and loud: it
retries what can be retried (connection errors, timeouts, 408/429/5xx, truncated bodies),
gives up at once on what cannot (404, a wrong checksum), reports progress while it goes, and
only ever renames a complete, verified file into place, so the server never sees half an
archive. Where the events go is the caller's choice (`Reporter`), which keeps this module free
of logging configuration and lets tests read the events.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from .uri import ModelURI, archive_filename, parse

Reporter = Callable[[str, dict[str, Any]], None]
"""Receives (event, fields) for every step: start, progress, retry, done, present."""

CHUNK = 1 << 20
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class FetchError(RuntimeError):
    """The archive could not be fetched; the message says why and what to check."""


@dataclass(frozen=True)
class FetchSettings:
    attempts: int = 5
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 30.0
    timeout_seconds: float = 30.0
    progress_interval_seconds: float = 5.0
    pvc_root: Path = Path("/mnt/pvc")
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)


def fetch(
    uri: str,
    dest_dir: Path,
    *,
    sha256: str | None,
    settings: FetchSettings,
    report: Reporter,
) -> Path:
    """Place the archive `uri` names at dest_dir/<its file name>; return that path."""
    source = parse(uri)
    expected = sha256.lower() if sha256 else None
    target = dest_dir / archive_filename(uri)
    if target.exists():
        if expected is not None:
            _check_digest(_file_digest(target), expected, source)
        report("present", {"path": str(target)})
        return target
    dest_dir.mkdir(parents=True, exist_ok=True)
    report("start", {"uri": source.redacted, "path": str(target)})
    started = time.monotonic()
    if source.scheme in ("http", "https"):
        digest, size = _download_with_retries(source, target, settings, report)
    else:
        digest, size = _copy_local(_local_path(source, settings), target, settings, report)
    try:
        if expected is not None:
            _check_digest(digest, expected, source)
    except FetchError:
        target.unlink(missing_ok=True)
        raise
    report(
        "done",
        {"path": str(target), "bytes": size, "sha256": digest, "seconds": _since(started)},
    )
    return target


def _local_path(source: ModelURI, settings: FetchSettings) -> Path:
    if source.scheme == "file":
        return Path(source.path)
    return settings.pvc_root / source.location / source.path.lstrip("/")


def _copy_local(
    path: Path, target: Path, settings: FetchSettings, report: Reporter
) -> tuple[str, int]:
    try:
        reader = path.open("rb")
    except FileNotFoundError:
        raise FetchError(
            f"model archive {path} does not exist: check the path (for pvc:// URIs the claim "
            f"is mounted at {settings.pvc_root}/<claim>)"
        ) from None
    except IsADirectoryError:
        raise FetchError(
            f"model archive {path} is a directory; point the URI at a .mar file"
        ) from None
    except PermissionError:
        raise FetchError(f"model archive {path} is not readable by uid {os.getuid()}") from None
    with reader, _staged(target) as writer:
        progress = _Progress(report, path.stat().st_size, settings.progress_interval_seconds)
        while chunk := reader.read(CHUNK):
            writer.write(chunk)
            progress.add(chunk)
        return progress.digest.hexdigest(), progress.done


def _download_with_retries(
    source: ModelURI, target: Path, settings: FetchSettings, report: Reporter
) -> tuple[str, int]:
    timeout = httpx.Timeout(settings.timeout_seconds)
    with httpx.Client(follow_redirects=True, timeout=timeout) as client:
        for attempt in range(1, settings.attempts + 1):
            try:
                return _download(client, source, target, settings, report)
            except _Retryable as error:
                if attempt == settings.attempts:
                    raise FetchError(
                        f"giving up on {source.redacted} after {attempt} attempts: {error}"
                    ) from None
                delay = min(
                    error.retry_after or settings.backoff_seconds * 2 ** (attempt - 1),
                    settings.max_backoff_seconds,
                )
                report("retry", {"attempt": attempt, "error": str(error), "delay": delay})
                settings.sleep(delay)
    raise FetchError(f"{source.redacted}: no download attempts configured (attempts < 1)")


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _download(
    client: httpx.Client,
    source: ModelURI,
    target: Path,
    settings: FetchSettings,
    report: Reporter,
) -> tuple[str, int]:
    try:
        with client.stream("GET", source.raw) as response:
            _check_status(response, source)
            total = _content_length(response)
            with _staged(target) as writer:
                progress = _Progress(report, total, settings.progress_interval_seconds)
                for chunk in response.iter_bytes(CHUNK):
                    writer.write(chunk)
                    progress.add(chunk)
                if total is not None and progress.done != total:
                    raise _Retryable(f"body ended after {progress.done} of {total} bytes")
                return progress.digest.hexdigest(), progress.done
    except httpx.TransportError as error:
        raise _Retryable(f"{type(error).__name__}: {error}") from None


def _check_status(response: httpx.Response, source: ModelURI) -> None:
    status = response.status_code
    if status < 400:
        return
    if status in RETRYABLE_STATUS:
        raise _Retryable(f"HTTP {status}", _retry_after(response))
    hint = {
        401: "the server wants credentials",
        403: "access is denied",
        404: "no file at that address",
    }.get(status, "the server refused the request")
    raise FetchError(f"HTTP {status} for {source.redacted}: {hint}; check model.uri")


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    return float(value) if value.isdigit() else None


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length", "")
    encoded = response.headers.get("content-encoding", "identity") != "identity"
    return int(value) if value.isdigit() and not encoded else None


@contextlib.contextmanager
def _staged(target: Path) -> Iterator[IO[bytes]]:
    """A temporary file beside target, renamed onto it only if the block completes."""
    fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as writer:
            yield writer
            writer.flush()
            os.fsync(writer.fileno())
        temp.chmod(0o644)
        os.replace(temp, target)
        _fsync_dir(target.parent)
    finally:
        temp.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Progress:
    """Counts bytes and hashes them, reporting at most every `interval` seconds."""

    def __init__(self, report: Reporter, total: int | None, interval: float) -> None:
        self.report = report
        self.total = total
        self.interval = interval
        self.digest = hashlib.sha256()
        self.done = 0
        self.started = self.last = time.monotonic()

    def add(self, chunk: bytes) -> None:
        self.digest.update(chunk)
        self.done += len(chunk)
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            fields: dict[str, Any] = {"bytes": self.done, "total": self.total}
            if self.total:
                fields["percent"] = round(100 * self.done / self.total, 1)
            fields["mib_per_s"] = round(self.done / (1 << 20) / max(now - self.started, 1e-9), 2)
            self.report("progress", fields)


def _file_digest(path: Path) -> str:
    with path.open("rb") as reader:
        return hashlib.file_digest(reader, "sha256").hexdigest()


def _check_digest(actual: str, expected: str, source: ModelURI) -> None:
    if actual != expected:
        raise FetchError(
            f"sha256 mismatch for {source.redacted}: expected {expected}, got {actual}; the "
            "archive changed or model.sha256 is wrong"
        )


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)
