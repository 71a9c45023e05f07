"""A one-line progress bar for packing archives of multi-gigabyte weights.

It only draws on a terminal and only for big inputs: in CI logs or for a few kilobytes a bar
is noise, so `Progress.for_stream` decides once and the packing code just calls `advance`.
"""

from __future__ import annotations

from typing import BinaryIO, TextIO

MiB = 1024**2
# Inputs smaller than this pack in about a second; no bar for them.
PROGRESS_THRESHOLD_BYTES = 64 * MiB


class Progress:
    """Redraws `label [#####.....]  42%  120.0/285.3 MiB` in place on `stream`."""

    def __init__(self, label: str, total: int, stream: TextIO | None, width: int = 30) -> None:
        self.label = label
        self.total = max(total, 1)
        self.stream = stream
        self.width = width
        self.done = 0
        self._drawn_percent = -1

    @classmethod
    def for_stream(
        cls,
        label: str,
        total: int,
        stream: TextIO,
        threshold: int = PROGRESS_THRESHOLD_BYTES,
    ) -> Progress:
        """A bar that draws only when `stream` is a terminal and `total` reaches `threshold`."""
        visible = total >= threshold and stream.isatty()
        return cls(label, total, stream if visible else None)

    def advance(self, count: int) -> None:
        self.done += count
        percent = min(100, self.done * 100 // self.total)
        if self.stream is not None and percent != self._drawn_percent:
            self._drawn_percent = percent
            filled = self.width * percent // 100
            bar = "#" * filled + "." * (self.width - filled)
            self.stream.write(
                f"\r{self.label} [{bar}] {percent:3d}%  "
                f"{self.done / MiB:.1f}/{self.total / MiB:.1f} MiB"
            )
            self.stream.flush()

    def finish(self) -> None:
        if self.stream is not None and self._drawn_percent >= 0:
            self.stream.write("\n")
            self.stream.flush()


class ProgressReader:
    """A read-only file wrapper that reports every chunk read to a `Progress`."""

    def __init__(self, source: BinaryIO, progress: Progress) -> None:
        self.source = source
        self.progress = progress

    def read(self, size: int = -1) -> bytes:
        chunk = self.source.read(size)
        self.progress.advance(len(chunk))
        return chunk
