"""Just enough Markdown reading for the docs' tests: fenced blocks, tables, headings, links.

The docs promise things a test can check (a command runs, a config key is accepted, an alert
has a runbook); these helpers find those promises in the text. Fenced code blocks are skipped
when looking for tables, headings and links, so an example never counts as a claim.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FENCE = re.compile(r"^(```+|~~~+)\s*(.*)$")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"(`+).*?\1")


@dataclass(frozen=True)
class Block:
    info: str  # what follows the opening fence, e.g. "bash runnable"
    body: str
    line: int  # 1-based line of the opening fence

    @property
    def words(self) -> list[str]:
        return self.info.split()


def code_blocks(text: str) -> list[Block]:
    blocks: list[Block] = []
    fence = ""
    info, start = "", 0
    body: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        match = FENCE.match(line)
        if not fence and match:
            fence, info, start, body = match.group(1), match.group(2).strip(), number, []
        elif fence and line.strip() == fence:
            blocks.append(Block(info, "\n".join(body) + "\n", start))
            fence = ""
        elif fence:
            body.append(line)
    return blocks


def prose(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fence = [], ""
    for line in text.splitlines():
        match = FENCE.match(line)
        if not fence and match:
            fence = match.group(1)
        elif fence and line.strip() == fence:
            fence = ""
        elif not fence:
            lines.append(line)
    return lines


def headings(text: str) -> list[str]:
    return [line.lstrip("#").strip() for line in prose(text) if re.match(r"^#{1,6} ", line)]


def links(text: str) -> list[str]:
    """Link targets in the prose, leaving out code spans (a regex is not a link)."""
    return [target for line in prose(text) for target in LINK.findall(CODE_SPAN.sub("", line))]


def table(text: str, header: list[str]) -> list[list[str]]:
    """The rows (cells stripped) of the first table whose header row is `header`."""
    lines = prose(text)
    for index, line in enumerate(lines):
        if _cells(line) == header:
            rows = []
            for row in lines[index + 2 :]:
                if not row.startswith("|"):
                    break
                rows.append(_cells(row))
            return rows
    raise ValueError(f"no table with the header {header}")


def _cells(line: str) -> list[str]:
    if not line.startswith("|"):
        return []
    parts = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [part.strip() for part in parts]


def unquote(cell: str) -> list[str]:
    """The code spans of a cell: "`a`, `b`" -> ["a", "b"]."""
    return re.findall(r"`([^`]+)`", cell)
