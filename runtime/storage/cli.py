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

from .fetch import FetchError, FetchSettings, StoreOptions, fetch
from .uri import SUPPORTED_SCHEMES, ModelURIError


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="marfleet fetch",
        description="Fetch a model archive into a directory, atomically "
        f"(schemes: {', '.join(SUPPORTED_SCHEMES)}).",
    )
    parser.add_argument(
        "uri",
        help="e.g. https://host/model.mar, s3://bucket/models/m.mar, gs://bucket/models/dir/, "
        "pvc://claim/dir/model.mar",
    )
    parser.add_argument("dest", type=Path, help="directory the archive is placed in")
    parser.add_argument("--sha256", default="", help="expected hex SHA-256 of the archive")
    parser.add_argument("--attempts", type=int, default=5, help="HTTP attempts (default 5)")
    parser.add_argument(
        "--backoff", type=float, default=1.0, help="first retry delay in seconds, doubled each time"
    )
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="connect timeout in seconds (default 30)"
    )
    parser.add_argument(
        "--stall-timeout",
        type=float,
        default=60.0,
        help="fail an attempt after this many seconds without a byte (default 60)",
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=3600.0,
        help="seconds the whole fetch may take, all attempts together (default 3600)",
    )
    parser.add_argument(
        "--max-bytes",
        type=int,
        default=20 << 30,
        help="size cap of the archive, or of all files of a prefix (default 20 GiB)",
    )
    parser.add_argument(
        "--max-redirects", type=int, default=5, help="HTTP redirects followed (default 5)"
    )
    store = parser.add_argument_group(
        "object stores (s3://, gs://)",
        "credentials come from the libraries' standard chains: AWS_ACCESS_KEY_ID/"
        "AWS_SECRET_ACCESS_KEY, AWS_SHARED_CREDENTIALS_FILE, IRSA web identity; "
        "GOOGLE_APPLICATION_CREDENTIALS, the metadata server (Workload Identity)",
    )
    store.add_argument(
        "--endpoint",
        default="",
        help="S3-compatible or GCS endpoint URL (default: AWS_ENDPOINT_URL / GOOGLE_BASE_URL, "
        "else the cloud's own)",
    )
    store.add_argument("--region", default="", help="S3 region (default: AWS_REGION)")
    store.add_argument(
        "--addressing",
        choices=("auto", "path", "virtual"),
        default="auto",
        help="S3 bucket addressing (auto: path-style with --endpoint, virtual-hosted on AWS)",
    )
    store.add_argument(
        "--anonymous", action="store_true", help="do not sign requests (public buckets)"
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="node-wide model cache to reuse and fill (keyed by URI + sha256, or ETag)",
    )
    parser.add_argument(
        "--cache-max-bytes",
        type=int,
        default=100 << 30,
        help="least recently used cache entries are removed past this size (default 100 GiB)",
    )
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
    warnings = ("retry", "mismatch", "cache-unavailable", "cache-corrupt")
    level = "warning" if event in warnings else "error" if event == "error" else "info"
    record = {"time": round(time.time(), 3), "level": level, "logger": "marfleet.fetch"}
    print(json.dumps({**record, "event": event, **fields}), file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    settings = FetchSettings(
        attempts=args.attempts,
        backoff_seconds=args.backoff,
        timeout_seconds=args.timeout,
        stall_seconds=args.stall_timeout,
        deadline_seconds=args.deadline,
        max_bytes=args.max_bytes,
        max_redirects=args.max_redirects,
        progress_interval_seconds=args.progress_interval,
        pvc_root=args.pvc_root,
        store=StoreOptions(
            endpoint=args.endpoint,
            region=args.region,
            addressing=args.addressing,
            anonymous=args.anonymous,
        ),
        cache_dir=args.cache_dir,
        cache_max_bytes=args.cache_max_bytes,
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
