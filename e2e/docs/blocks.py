"""The shell blocks of README.md and docs/ that tests run, found by the word after the fence.

    ```bash runnable     cheap and self-contained: tests/integration/test_docs_commands.py runs it
    ```bash demo         needs the cluster `make demo` starts: tests/integration/test_demo.py runs
                         it there, with NS and ISVC naming the demo's canary InferenceService

Each block runs in `bash` with `set -euo pipefail`, so a failing command anywhere fails it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .markdown import Block, code_blocks

REPO = Path(__file__).resolve().parents[2]
RUNNABLE = "runnable"
DEMO = "demo"


@dataclass(frozen=True)
class Marked:
    page: Path
    block: Block

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.block.line}"


def pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def marked(marker: str) -> list[Marked]:
    """Shell blocks whose fence names `marker`, in page order."""
    return [
        Marked(page, block)
        for page in pages()
        for block in code_blocks(page.read_text())
        if block.words[:1] in (["bash"], ["sh"]) and marker in block.words[1:]
    ]


def run(
    marked_block: Marked, cwd: Path, env: Mapping[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + marked_block.block.body],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
