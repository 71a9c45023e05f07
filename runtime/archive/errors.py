"""The errors the archive package raises; each message names the file or member at fault."""

from __future__ import annotations


class ArchiveError(Exception):
    """An archive could not be written or read."""


class UnsafeArchiveError(ArchiveError):
    """An archive member would escape the target directory, is not a plain file, or is too big."""

    def __init__(self, member: str, reason: str) -> None:
        self.member = member
        self.reason = reason
        super().__init__(f"refusing to extract member {member!r}: {reason}")


class ManifestError(ArchiveError):
    """MAR-INF/MANIFEST.json is missing or is not a model manifest."""
