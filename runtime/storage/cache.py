"""A node-wide cache of fetched models, so ten replicas on one node download once.

The operator mounts it into the fetch init container when the cluster admin configured one in
the chart (a hostPath or a shared PVC, one folder per namespace); `marfleet fetch --cache-dir`
uses it. Entries are keyed by the URI (without secrets) plus the endpoint and a version:
model.sha256 when given — then a hit needs no request to the store at all — or else the
store's ETag/generation of every object. Entries are written under a temporary name and
renamed, so a reader never sees half of one; a per-key lock makes concurrent pods on a node
wait for the first download instead of all downloading. A hit with sha256 is verified while it
is copied out; a mismatching entry is dropped and fetched again. Least recently used entries
are removed once the cache grows past its size cap. The cache is an optimisation: when it is
not writable the fetch goes on without it and says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .limits import Budget

Reporter = Callable[[str, dict[str, Any]], None]
LOCK_POLL_SECONDS = 0.2


class NodeCache:
    def __init__(self, root: Path, max_bytes: int, report: Reporter) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.report = report

    @classmethod
    def open(cls, root: Path | None, max_bytes: int, report: Reporter) -> NodeCache | None:
        if root is None:
            return None
        try:
            (root / ".locks").mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=root, prefix=".probe."):
                pass
        except OSError as error:
            report(
                "cache-unavailable",
                {"path": str(root), "error": f"{type(error).__name__}: {error.strerror}"},
            )
            return None
        return cls(root, max_bytes, report)

    def _key(self, identity: str, version: str) -> str:
        return hashlib.sha256(f"{identity}\0{version}".encode()).hexdigest()[:40]

    @contextlib.contextmanager
    def locked(self, identity: str, version: str, budget: Budget) -> Iterator[None]:
        """Hold the entry's lock (waiting for another pod's download, within the deadline)."""
        path = self.root / ".locks" / self._key(identity, version)
        with path.open("a") as handle:
            waited = False
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not waited:
                        self.report("cache-wait", {"path": str(path)})
                        waited = True
                    budget.check_time()
                    time.sleep(LOCK_POLL_SECONDS)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def copy_to(self, identity: str, version: str, target: Path, sha256: str | None) -> bool:
        """Copy a cached entry to target (atomically); False when there is none to use."""
        entry = self.root / self._key(identity, version)
        cached = entry / target.name
        if not cached.exists():
            return False
        staging = Path(
            tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".cache", dir=target.parent)
        )
        try:
            copy = staging / target.name
            if cached.is_dir():
                shutil.copytree(cached, copy)
            else:
                digest = _copy_file(cached, copy)
                if sha256 is not None and digest != sha256:
                    self.report("cache-corrupt", {"path": str(cached), "sha256": digest})
                    shutil.rmtree(entry, ignore_errors=True)
                    return False
            os.replace(copy, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        os.utime(entry)  # most recently used
        return True

    def store(self, identity: str, version: str, source: Path) -> None:
        """Keep a copy of a verified, placed model; failures only cost the next node a fetch."""
        entry = self.root / self._key(identity, version)
        if entry.exists():
            return
        try:
            staging = Path(tempfile.mkdtemp(prefix=".store.", dir=self.root))
            try:
                if source.is_dir():
                    shutil.copytree(source, staging / source.name)
                else:
                    _copy_file(source, staging / source.name)
                staging.chmod(0o750)
                os.replace(staging, entry)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            self._evict(keep=entry)
        except OSError as error:
            self.report(
                "cache-unavailable",
                {"path": str(self.root), "error": f"{type(error).__name__}: {error.strerror}"},
            )

    def _evict(self, keep: Path) -> None:
        entries = [
            (entry.stat().st_mtime, _size(entry), entry)
            for entry in self.root.iterdir()
            if not entry.name.startswith(".") and entry.is_dir()
        ]
        total = sum(size for _, size, _ in entries)
        for _, size, entry in sorted(entries):
            if total <= self.max_bytes:
                return
            if entry != keep:
                shutil.rmtree(entry, ignore_errors=True)
                total -= size
                self.report("cache-evict", {"path": str(entry), "bytes": size})


def _copy_file(source: Path, target: Path) -> str:
    digest = hashlib.sha256()
    with source.open("rb") as reader, target.open("wb") as writer:
        os.chmod(target, 0o640)
        while chunk := reader.read(1 << 20):
            digest.update(chunk)
            writer.write(chunk)
    return digest.hexdigest()


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
