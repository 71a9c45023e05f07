"""`python -m e2e.images build NAME...`: build (or find cached) the named images and print, for
each, its reference, archive size and how long it took."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence

from . import marfleet, node
from .oci import Image, ImageError

BUILDERS: dict[str, Callable[[], Image]] = {
    "pause": node.pause,
    "base": node.base,
    "runtime": marfleet.runtime,
    "operator": marfleet.operator,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.images")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build images (cached by their inputs)")
    build.add_argument("names", nargs="+", choices=sorted(BUILDERS))
    args = parser.parse_args(argv)
    for name in args.names:
        started = time.monotonic()
        try:
            image = BUILDERS[name]()
        except ImageError as error:
            print(f"{name}: {error}", file=sys.stderr)
            return 1
        size = image.archive.stat().st_size / 2**20
        print(f"{image.ref}  {size:.0f} MiB  {time.monotonic() - started:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
