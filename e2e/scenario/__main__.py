"""`python -m e2e.scenario`: run the real-node scenario and print what it measured."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from e2e.demo.console import Console, DemoError

from .story import STEPS, Scenario, Settings, summary_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.scenario", description=__doc__)
    parser.add_argument("--cluster", default=Settings.cluster, help="local cluster name")
    parser.add_argument("--workdir", type=Path, default=Settings.workdir)
    parser.add_argument("--timeout", type=float, default=Settings.timeout, help="per wait, s")
    parser.add_argument("--keep", action="store_true", help="leave the cluster running")
    args = parser.parse_args(argv)
    settings = Settings(args.cluster, args.workdir, args.timeout, args.keep)
    try:
        report = Scenario(settings, Console(sys.stdout, STEPS)).run()
    except DemoError as exc:
        print(f"\nscenario failed: {exc}", file=sys.stderr)
        return 1
    print(summary_json(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
