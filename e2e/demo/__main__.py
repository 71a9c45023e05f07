"""`python -m e2e.demo up|down [--state-dir DIR]`: what `make demo` and `make demo-down` run.

Ctrl-C (or SIGTERM) during `up` removes everything the run had started before exiting.
"""

from __future__ import annotations

import argparse
import io
import signal
import sys
from pathlib import Path
from types import FrameType

from .console import Console
from .story import STEPS, Demo, DemoSettings

DEFAULT_STATE_DIR = Path("/tmp/marfleet-demo")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.demo")
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help=f"logs, archives, credentials and the process list (default {DEFAULT_STATE_DIR})",
    )
    parser.add_argument("--requests", type=int, default=200, help="predictions per weight setting")
    args = parser.parse_args(argv)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="replace")
    console = Console(sys.stdout, STEPS)
    demo = Demo(DemoSettings(state_dir=args.state_dir, requests=args.requests), console)
    if args.action == "down":
        demo.down()
        return 0
    # A shell that starts `make demo &` without job control hands it SIGINT ignored; Ctrl-C
    # (or `kill -INT`) must still clean up, so both signals are taken explicitly.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        demo.up()
    except KeyboardInterrupt:
        console.say("interrupted: everything the demo started has been removed")
        return 130
    except RuntimeError as error:  # DemoError, ClusterError, HelmError: each says what to do
        console.say(f"demo failed: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
