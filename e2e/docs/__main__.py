"""`python -m e2e.docs write|check`: regenerate, or verify, the generated pages in docs/.

    docs/inferenceservice-reference.md   from crds/inferenceservice.yaml
    docs/runtime-api.md                  from a running `marfleet serve`'s OpenAPI descriptions

`check` exits 1 and names the stale pages; the tests run the same comparison.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from . import crd_reference, runtime_api

PAGES: dict[Path, Callable[[], str]] = {
    crd_reference.PAGE_PATH: lambda: crd_reference.render(crd_reference.load_crd()),
    runtime_api.PAGE_PATH: lambda: runtime_api.render(runtime_api.fetch_descriptions()),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.docs")
    parser.add_argument("action", choices=["write", "check"])
    args = parser.parse_args(argv)
    stale = []
    for path, build in PAGES.items():
        text = build()
        if args.action == "write":
            path.write_text(text)
            print(f"wrote {path}")
        elif not path.exists() or path.read_text() != text:
            stale.append(path)
    for path in stale:
        print(f"{path} is out of date: run `python -m e2e.docs write`", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
