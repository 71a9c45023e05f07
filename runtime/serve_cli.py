"""`marfleet serve`: TorchServe's `torchserve --start` for marfleet's model server.

    marfleet serve [--start] --model-store DIR [--models name=x.mar ...]
                   [--ts-config config.properties] [--foreground] [--disable-token-auth]
                   [--enable-model-api] [--ncs]
    marfleet serve --stop
    marfleet serve --version

torchserve's command lines work unchanged: its other options (`--log-config`, `--plugins-path`,
`--workflow-store`, `--cpp-log-config`) are for parts marfleet does not have, and are accepted
with a warning.

As with torchserve, the server runs in the background unless `--foreground` is given (pods
and tests use `--foreground`); the background server writes `marfleet.pid` and `marfleet.log`
in the working directory, a second start while it runs is refused, and `--stop` ends it
gracefully (nothing running is not an error). The pid file is trusted only while its process
is a `marfleet serve`: a pid the system has since given to another program is never signalled.
SIGTERM or SIGINT: report unhealthy, stop accepting, finish in-flight requests within
`shutdown_grace_seconds`, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import uvloop
from marfleet.runtime.config import ConfigError, ServerConfig, load_server_config, parse_properties
from marfleet.runtime.metrics_config import MetricsConfigError, load_metrics_config
from marfleet.runtime.server.app import ModelServer, server_version
from marfleet.runtime.server.logs import configure_logging

log = logging.getLogger("marfleet.serve")

PID_FILE = Path("marfleet.pid")
LOG_FILE = Path("marfleet.log")
KEY_FILE = Path("key_file.json")
STOP_WAIT_S = 120  # --stop's wait for the server to finish (shutdown_grace_seconds is 30)


TORCHSERVE_ONLY = (
    ("--log-config",),  # log4j2: marfleet logs JSON lines (docs/operations.md)
    ("--cpp-log-config",),  # the C++ backend's
    ("--plugins-path", "--ppath"),  # Java plugin jars
    ("--workflow-store",),  # workflows are not provided
)
"""torchserve options for parts marfleet does not have: a command line that passes them still
starts the server, and a warning names each one."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="marfleet serve", description=__doc__.splitlines()[0])
    parser.add_argument("--model-store", help="directory of model archives (model_store)")
    parser.add_argument(
        "--models",
        nargs="+",
        metavar="MODEL",
        help="models to load at start: name=file.mar, file.mar, a URL, or all (load_models)",
    )
    parser.add_argument(
        "--ts-config", type=Path, help="a TorchServe config.properties (default: $TS_CONFIG_FILE)"
    )
    parser.add_argument("--foreground", action="store_true", help="run in this process")
    action = parser.add_mutually_exclusive_group()
    action.add_argument(
        "--start", action="store_true", help="start the server (the default; as torchserve's)"
    )
    action.add_argument("--stop", action="store_true", help="stop the background server")
    action.add_argument("-v", "--version", action="store_true", help="print the version")
    parser.add_argument(
        "--disable-token-auth", "--dt", action="store_true", help="no management token"
    )
    parser.add_argument(
        "--enable-model-api", action="store_true", help="allow registering/unregistering models"
    )
    parser.add_argument(
        "--no-config-snapshots",
        "--ncs",
        action="store_true",
        help="accepted: marfleet writes no config snapshots",
    )
    for flag, *aliases in TORCHSERVE_ONLY:
        parser.add_argument(
            flag,
            *aliases,
            metavar="PATH",
            help="torchserve's; accepted and ignored, with a warning",
        )
    return parser


def load_config(args: argparse.Namespace, env: dict[str, str]) -> ServerConfig:
    config_path = args.ts_config or (
        Path(env["TS_CONFIG_FILE"]) if "TS_CONFIG_FILE" in env else None
    )
    properties: dict[str, str] = {}
    if config_path is not None:
        try:
            properties = parse_properties(config_path.read_text(encoding="utf-8"))
        except OSError as error:
            raise ConfigError(f"cannot read the config file {config_path}: {error}") from None
    if args.disable_token_auth:
        properties["disable_token_authorization"] = "true"
    if args.enable_model_api:
        properties["enable_model_api"] = "true"
    config = load_server_config(properties, env, model_store=args.model_store, models=args.models)
    if config.model_store is None:
        raise ConfigError("missing the model store: pass --model-store DIR (or model_store=)")
    if not config.model_store.is_dir():
        raise ConfigError(f"model store {config.model_store} is not a directory")
    try:
        metrics = load_metrics_config(
            config.metrics_config, auto_detect=config.model_metrics_auto_detect
        )
    except MetricsConfigError as error:
        raise ConfigError(str(error)) from None
    return replace(config, metrics=metrics)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.version:
        print(f"marfleet {server_version()}")
        return 0
    if args.stop:
        return stop_background()
    if not args.foreground and (pid := running_server()) is not None:
        print(
            f"marfleet serve is already running (pid {pid}); stop it with `marfleet serve --stop`",
            file=sys.stderr,
        )
        return 1
    env = dict(os.environ)
    configure_logging()
    for flag, *_ in TORCHSERVE_ONLY:
        if getattr(args, flag.removeprefix("--").replace("-", "_")) is not None:
            log.warning(
                "torchserve option not supported by marfleet; ignored", extra={"option": flag}
            )
    try:
        config = load_config(args, env)
    except ConfigError as error:
        print(f"marfleet serve: {error}", file=sys.stderr)
        return 2
    for key in config.ignored_keys:
        log.warning("config key not supported by marfleet; ignored", extra={"key": key})
    if not args.foreground:
        return start_background(argv)
    return uvloop.run(serve(config, env))


async def serve(config: ServerConfig, env: dict[str, str]) -> int:
    server = ModelServer(config, env=env, key_file=KEY_FILE.resolve(), log_stream=sys.stdout)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, server.request_stop)
    try:
        await server.start()
    except (OSError, ConfigError) as error:
        log.error("cannot listen", extra={"reason": str(error)})
        await server.shutdown()
        return 1
    await server.wait_for_stop()
    await server.shutdown()
    return 0


def start_background(argv: list[str]) -> int:
    with LOG_FILE.open("ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "marfleet.runtime.cli", "serve", *argv, "--foreground"],
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    PID_FILE.write_text(str(process.pid))
    print(
        f"marfleet serve started in the background (pid {process.pid}, log {LOG_FILE}); "
        "stop it with `marfleet serve --stop`"
    )
    return 0


def stop_background() -> int:
    """torchserve --stop: SIGTERM the background server and wait for it to finish its
    in-flight work; its key file goes with it. Nothing running is not an error."""
    pid = running_server()
    if pid is None:
        print("marfleet serve is not currently running")
        return 0
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT_S
    while _alive(pid):
        if time.monotonic() > deadline:
            print(
                f"marfleet serve: process {pid} did not stop within {STOP_WAIT_S} s; "
                "it is still running",
                file=sys.stderr,
            )
            return 1
        time.sleep(0.2)
    PID_FILE.unlink(missing_ok=True)
    KEY_FILE.unlink(missing_ok=True)
    print("marfleet serve stopped")
    return 0


def running_server() -> int | None:
    """The pid in marfleet.pid when that process is a `marfleet serve` still running; a stale
    file (its process gone, or its pid now another program's) is removed, so neither --stop
    nor a new start acts on a process that is not ours."""
    try:
        pid = int(PID_FILE.read_text())
    except (OSError, ValueError):
        return None
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        command = []
    if b"marfleet.runtime.cli" in command and b"serve" in command:
        return pid
    PID_FILE.unlink(missing_ok=True)
    print(f"removed a stale {PID_FILE}: process {pid} is not a running marfleet serve")
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
