"""`marfleet fetch <uri> <dir>`: the model-server pod's init container.

Prints one JSON object per line on stderr (event name, time, fields) so the pod log shows
progress and the reason for a failure; the exit status tells Kubernetes whether to retry:
0 fetched (or already there), 1 the fetch failed, 2 the URI or arguments cannot work.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .fetch import FetchError, FetchSettings, fetch
from .uri import SUPPORTED_SCHEMES, ModelURIError


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="marfleet fetch",
        description="Fetch a model archive into a directory, atomically "
        f"(schemes: {', '.join(SUPPORTED_SCHEMES)}).",
    )
    parser.add_argument("uri", help="e.g. https://host/model.mar, pvc://claim/dir/model.mar")
    parser.add_argument("dest", type=Path, help="directory the archive is placed in")
    parser.add_argument("--sha256", default="", help="expected hex SHA-256 of the archive")
    parser.add_argument("--attempts", type=int, default=5, help="HTTP attempts (default 5)")
    parser.add_argument(
        "--backoff", type=float, default=1.0, help="first retry delay in seconds, doubled each time"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="HTTP timeout in seconds")
    parser.add_argument(
        "--progress-interval", type=float, default=5.0, help="seconds between progress lines"
    )
    parser.add_argument(
        "--pvc-root",
        type=Path,
        default=Path("/mnt/pvc"),
        help="where pvc://<claim>/... claims are mounted (<root>/<claim>)",
    )
    return parser


def report(event: str, fields: dict[str, Any]) -> None:
    level = "warning" if event == "retry" else "error" if event == "error" else "info"
    record = {"time": round(time.time(), 3), "level": level, "logger": "marfleet.fetch"}
    print(json.dumps({**record, "event": event, **fields}), file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    settings = FetchSettings(
        attempts=args.attempts,
        backoff_seconds=args.backoff,
        timeout_seconds=args.timeout,
        progress_interval_seconds=args.progress_interval,
        pvc_root=args.pvc_root,
    )
    try:
        fetch(args.uri, args.dest, sha256=args.sha256 or None, settings=settings, report=report)
    except ModelURIError as error:
        report("error", {"error": str(error)})
        return 2
    except (FetchError, OSError) as error:
        report("error", {"error": str(error)})
        return 1
    return 0
