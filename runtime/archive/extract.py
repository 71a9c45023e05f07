"""Safe extraction of model archives (zip `.mar` and `.tar.gz`) that may come from anywhere.

Every member is checked before a byte of it is written: its name must stay inside the target
(no absolute path, drive letter, backslash or `..`), it must be a plain file or a directory (no
symlink, hardlink or device), and its size and compression ratio must be within limits. Sizes
are counted again while the bytes are copied, so a header that lies is caught too. Everything is
written into a fresh staging directory beside the target and renamed into place only when the
whole archive is good; on any error the staging directory is removed, so a refused archive
leaves nothing behind, inside or outside the target.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import stat
import tarfile
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, BinaryIO

from marfleet.runtime.archive.errors import ArchiveError, UnsafeArchiveError

MiB = 1024**2
GiB = 1024**3
CHUNK = 1 * MiB
ZIP_MAGIC = b"PK\x03\x04"
EMPTY_ZIP_MAGIC = b"PK\x05\x06"
GZIP_MAGIC = b"\x1f\x8b"
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class ExtractionLimits:
    """How much an archive may unpack to. Ratios are checked only past `ratio_floor_bytes`."""

    max_member_bytes: int = 16 * GiB
    max_total_bytes: int = 64 * GiB
    max_members: int = 100_000
    max_compression_ratio: float = 200.0
    ratio_floor_bytes: int = 1 * MiB


def archive_kind(path: Path) -> str:
    """'zip' or 'tgz', from the file's first bytes (extensions lie; TorchServe accepts both)."""
    with path.open("rb") as handle:
        head = handle.read(4)
    if head in (ZIP_MAGIC, EMPTY_ZIP_MAGIC):
        return "zip"
    if head[:2] == GZIP_MAGIC:
        return "tgz"
    raise ArchiveError(
        f"{path} is neither a zip (.mar) nor a gzip-compressed tar (.tar.gz) archive"
    )


def extract_archive(archive: Path, target: Path, limits: ExtractionLimits) -> None:
    """Unpack `archive` into the directory `target`, which must not exist yet."""
    if target.exists():
        raise ArchiveError(f"cannot extract {archive} into {target}: it already exists")
    kind = archive_kind(archive)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        if kind == "zip":
            _extract_zip(archive, staging, limits)
        else:
            _extract_tgz(archive, staging, limits)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def safe_relative_path(name: str) -> PurePosixPath:
    """The member name as a relative path that cannot leave the target, or UnsafeArchiveError."""
    if not name or "\x00" in name:
        raise UnsafeArchiveError(name, "empty name or NUL byte in the name")
    if "\\" in name:
        raise UnsafeArchiveError(name, "backslash in the name (a Windows path?)")
    if name.startswith("/") or _DRIVE.match(name):
        raise UnsafeArchiveError(name, "absolute path")
    path = PurePosixPath(name)
    if ".." in path.parts:
        raise UnsafeArchiveError(name, "'..' in the path would leave the target directory")
    return path


class _Budget:
    """Running totals against the limits; every refusal names the member at fault."""

    def __init__(self, limits: ExtractionLimits) -> None:
        self.limits = limits
        self.members = 0
        self.total = 0

    def admit(self, name: str, declared_size: int) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise UnsafeArchiveError(
                name, f"the archive has more than {self.limits.max_members} members"
            )
        self.check_size(name, declared_size, 0)

    def check_size(self, name: str, member_bytes: int, total_extra: int) -> None:
        if member_bytes > self.limits.max_member_bytes:
            raise UnsafeArchiveError(
                name,
                f"it unpacks to more than {self.limits.max_member_bytes} bytes "
                "(the member size limit)",
            )
        if self.total + total_extra > self.limits.max_total_bytes:
            raise UnsafeArchiveError(
                name,
                f"the archive unpacks to more than {self.limits.max_total_bytes} bytes "
                "(the total size limit)",
            )

    def check_ratio(self, name: str, unpacked: int, packed: int) -> None:
        if unpacked < self.limits.ratio_floor_bytes:
            return
        ratio = unpacked / max(packed, 1)
        if ratio > self.limits.max_compression_ratio:
            raise UnsafeArchiveError(
                name,
                f"compression ratio {ratio:.0f}:1 exceeds the limit "
                f"{self.limits.max_compression_ratio:.0f}:1 (a decompression bomb?)",
            )


def _zip_member_kind(info: zipfile.ZipInfo) -> str:
    mode = info.external_attr >> 16
    if info.create_system == 3 and stat.S_IFMT(mode):  # made on Unix: high bits are st_mode
        if stat.S_ISLNK(mode):
            return "symlink"
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            return "device or special file"
    return "dir" if info.is_dir() else "file"


def _extract_zip(archive: Path, staging: Path, limits: ExtractionLimits) -> None:
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = bundle.infolist()
            declared = _Budget(limits)
            packed = 0
            for info in members:
                safe_relative_path(info.filename)
                kind = _zip_member_kind(info)
                if kind not in ("file", "dir"):
                    raise UnsafeArchiveError(info.filename, f"it is a {kind}")
                declared.admit(info.filename, info.file_size)
                declared.total += info.file_size
                declared.check_ratio(info.filename, info.file_size, info.compress_size)
                packed += info.compress_size
                # many members each under the ratio floor must not add up to a bomb
                declared.check_ratio(info.filename, declared.total, packed)
            actual = _Budget(limits)
            for info in members:
                relative = safe_relative_path(info.filename)
                if info.is_dir():
                    _make_dir(staging, relative, info.filename)
                    continue

                def check(written: int, info: zipfile.ZipInfo = info) -> None:
                    actual.check_size(info.filename, written, written)
                    actual.check_ratio(info.filename, written, info.compress_size)

                with bundle.open(info) as source:
                    mode = info.external_attr >> 16
                    actual.total += _write_member(
                        source, staging, relative, info.filename, mode, check
                    )
    except zipfile.BadZipFile as error:
        raise ArchiveError(f"{archive} is not a readable zip archive: {error}") from None


def _extract_tgz(archive: Path, staging: Path, limits: ExtractionLimits) -> None:
    budget = _Budget(limits)
    with archive.open("rb") as packed:
        try:
            with tarfile.open(fileobj=packed, mode="r|gz") as bundle:
                for member in bundle:
                    relative = safe_relative_path(member.name)
                    if member.issym() or member.islnk():
                        raise UnsafeArchiveError(member.name, "it is a symlink or hardlink")
                    if member.isdir():
                        _make_dir(staging, relative, member.name)
                        continue
                    if not member.isreg():
                        raise UnsafeArchiveError(member.name, "it is a device or special file")
                    budget.admit(member.name, member.size)
                    source = bundle.extractfile(member)
                    if source is None:
                        raise UnsafeArchiveError(member.name, "its contents cannot be read")

                    def check(written: int, name: str = member.name) -> None:
                        budget.check_size(name, written, written)
                        budget.check_ratio(name, budget.total + written, packed.tell())

                    budget.total += _write_member(
                        source, staging, relative, member.name, member.mode, check
                    )
        except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as error:
            raise ArchiveError(f"{archive} is not a readable .tar.gz archive: {error}") from None


def _make_dir(staging: Path, relative: PurePosixPath, name: str) -> None:
    try:
        (staging / relative).mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UnsafeArchiveError(
            name, "a file of the same name is already in the archive"
        ) from None


@contextmanager
def _create_exclusive(path: Path, name: str, executable: bool) -> Iterator[BinaryIO]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags, 0o755 if executable else 0o644)
    except FileExistsError:
        raise UnsafeArchiveError(name, "the archive holds this name twice") from None
    except (NotADirectoryError, IsADirectoryError):
        raise UnsafeArchiveError(name, "a file and a directory share this name") from None
    with os.fdopen(fd, "wb") as handle:
        yield handle


def _write_member(
    source: IO[bytes],
    staging: Path,
    relative: PurePosixPath,
    name: str,
    mode: int,
    check: Callable[[int], None],
) -> int:
    """Copy one member, calling `check` with the bytes written so far after every chunk."""
    if relative.parent.parts:
        _make_dir(staging, relative.parent, name)
    written = 0
    with _create_exclusive(staging / relative, name, bool(mode & 0o111)) as sink:
        while chunk := source.read(CHUNK):
            written += len(chunk)
            check(written)
            sink.write(chunk)
    return written
