"""`marfleet router`: command-line flags → `RouterSettings`, then run the router.

In a pod (rendered by the operator) the router gets `--isvc`, its namespace in
$MARFLEET_NAMESPACE and the variants' Service URLs in $MARFLEET_ROUTER_BACKENDS, and follows
the InferenceService's weights through the API. On a laptop or in a test, give the upstreams
and weights as flags and no API server is involved:

    marfleet router --backend stable=http://127.0.0.1:9001 --backend canary=http://127.0.0.1:9002 \\
        --weights stable=90,canary=10 --sticky-header x-user-id --mirror canary=5

An `https://` backend is reached over TLS on HTTP and gRPC, verified with `--upstream-ca`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import ssl
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import uvloop
from marfleet.runtime.config import CORS_KEYS
from marfleet.runtime.router.app import RouterSettings, run
from marfleet.runtime.router.table import Mirror, Routing
from marfleet.runtime.router.trust import GRACE_SECONDS
from marfleet.runtime.router.upstream import Timeouts
from marfleet.runtime.server.certificates import CertificateError, ServingCertificate, read_pem
from marfleet.runtime.server.grpc_listener import DEFAULT_KEEPALIVE_S, DEFAULT_MAX_AGE_S
from marfleet.runtime.server.http import HttpLimits
from marfleet.runtime.server.logs import configure_logging

BACKENDS_ENV = "MARFLEET_ROUTER_BACKENDS"
NAMESPACE_ENV = "MARFLEET_NAMESPACE"


class UsageError(ValueError):
    pass


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="marfleet router",
        description="Split an InferenceService's traffic between its variants by weight.",
    )
    p.add_argument("--isvc", default="", help="InferenceService to follow (and metrics label)")
    p.add_argument("--namespace", default=None, help=f"its namespace (default ${NAMESPACE_ENV})")
    p.add_argument("--kubeconfig", default=None, help="kubeconfig outside a pod")
    p.add_argument(
        "--backend",
        action="append",
        default=[],
        metavar="VARIANT=URL",
        help=f"a variant's base URL (repeat; default: the JSON list in ${BACKENDS_ENV})",
    )
    p.add_argument(
        "--weights",
        default=None,
        metavar="VARIANT=PERCENT,...",
        help="fixed weights instead of following the InferenceService",
    )
    p.add_argument("--sticky-header", default="", help="with --weights: header that pins a variant")
    p.add_argument(
        "--mirror", default=None, metavar="VARIANT=PERCENT", help="with --weights: shadow copies"
    )
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--metrics-port", type=int, default=8082)
    p.add_argument("--connect-timeout", type=float, default=5.0, help="seconds to connect")
    p.add_argument(
        "--response-timeout",
        type=float,
        default=120.0,
        help="seconds an upstream may take to answer (for streams: between chunks)",
    )
    defaults = HttpLimits()
    p.add_argument(
        "--max-request-bytes",
        type=int,
        default=defaults.max_body_bytes,
        help="a request body at most (413 beyond); also a gRPC message from a client",
    )
    p.add_argument(
        "--max-response-bytes",
        type=int,
        default=defaults.max_body_bytes,
        help="a gRPC message from a variant at most (RESOURCE_EXHAUSTED beyond); HTTP answers "
        "are passed on as they arrive, whatever their length",
    )
    p.add_argument(
        "--max-request-head-bytes",
        type=int,
        default=defaults.max_head_bytes,
        help="request line + headers at most (431/414 beyond)",
    )
    p.add_argument(
        "--request-head-timeout",
        type=float,
        default=defaults.head_timeout,
        help="seconds a request head may take to arrive (408 beyond)",
    )
    p.add_argument(
        "--request-body-timeout",
        type=float,
        default=defaults.body_timeout,
        help="seconds a request body may pause between reads (408 beyond)",
    )
    p.add_argument(
        "--keepalive-timeout",
        type=float,
        default=defaults.keepalive_timeout,
        help="seconds an idle client connection is kept",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=defaults.max_connections,
        help="client connections at most (503 beyond)",
    )
    p.add_argument(
        "--max-buffered-request-bytes",
        type=int,
        default=defaults.max_buffered_body_bytes,
        help="bytes of request bodies still arriving, all clients together (503 beyond)",
    )
    p.add_argument(
        "--grpc-port", type=int, default=0, help="listen for gRPC calls here too (0: no gRPC)"
    )
    p.add_argument(
        "--grpc-backend-port",
        type=int,
        default=7070,
        help="each variant's gRPC port, on the host of its --backend URL",
    )
    p.add_argument(
        "--grpc-backend",
        action="append",
        default=[],
        metavar="VARIANT=HOST:PORT",
        help="a variant's gRPC address, where it is not --backend's host:--grpc-backend-port",
    )
    p.add_argument(
        "--grpc-keepalive",
        type=float,
        default=DEFAULT_KEEPALIVE_S,
        help="seconds a gRPC client connection may stay silent before it is pinged; one that "
        "does not answer within as long again (at most 20 s) is closed with its calls",
    )
    p.add_argument(
        "--grpc-max-connection-age",
        type=float,
        default=DEFAULT_MAX_AGE_S,
        help="seconds after which a gRPC client connection is sent GOAWAY (clients reconnect "
        "for their next calls); it is closed, with what its calls hold, as long again later",
    )
    p.add_argument(
        "--certificate-file",
        default=None,
        metavar="FILE",
        help="PEM certificate chain to serve HTTPS and gRPC TLS with (with --private-key-file; "
        "default: plain HTTP and gRPC); the metrics port stays plain",
    )
    p.add_argument(
        "--private-key-file", default=None, metavar="FILE", help="the certificate's PEM key"
    )
    p.add_argument(
        "--certificate-reload-seconds",
        type=float,
        default=30.0,
        help="how often the certificate and key are read again (a renewed pair is served from "
        "the next connection on)",
    )
    p.add_argument(
        "--upstream-ca",
        default=None,
        metavar="FILE",
        help="PEM CA certificate(s) that https:// backends (and their gRPC ports) are verified "
        "with (default: the system's trust store)",
    )
    p.add_argument(
        "--upstream-ca-reload-seconds",
        type=float,
        default=30.0,
        help="how often --upstream-ca is read again (new certificates are trusted at once)",
    )
    p.add_argument(
        "--upstream-ca-grace-seconds",
        type=float,
        default=GRACE_SECONDS,
        help="how long the CA certificates --upstream-ca held before a change stay trusted",
    )
    for key, header in CORS_KEYS.items():
        p.add_argument(
            "--" + key.replace("_", "-"),
            default="",
            metavar="VALUE",
            help=f"{header} on the router's own answers (its 502, 503 and 504; a variant's "
            f"answer keeps the variant's): the value of the servers' {key}",
        )
    p.add_argument("--mirror-limit", type=int, default=64, help="shadow copies in flight at most")
    p.add_argument("--drain-seconds", type=float, default=20.0, help="grace period on SIGTERM")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def settings_from(argv: Sequence[str], environ: Mapping[str, str]) -> RouterSettings:
    args = parser().parse_args(argv)
    backends = _backends(args.backend, environ.get(BACKENDS_ENV, ""))
    static: Routing | None = None
    if args.weights is not None:
        mirror = None
        if args.mirror:
            variant, percent = _pair(args.mirror, "--mirror")
            mirror = Mirror(variant, _int(percent, "--mirror"))
        weights = dict(_pair(item, "--weights") for item in args.weights.split(","))
        static = Routing(
            weights={name: _int(value, "--weights") for name, value in weights.items()},
            sticky_header=args.sticky_header.lower(),
            mirror=mirror,
        )
    elif not args.isvc:
        raise UsageError("give --weights, or --isvc to follow an InferenceService's weights")
    elif args.sticky_header or args.mirror:
        raise UsageError("--sticky-header and --mirror go with --weights; else spec.routing rules")
    return RouterSettings(
        isvc=args.isvc,
        namespace=args.namespace or environ.get(NAMESPACE_ENV, "default"),
        kubeconfig=args.kubeconfig,
        backends=backends,
        static=static,
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port,
        timeouts=Timeouts(connect=args.connect_timeout, response=args.response_timeout),
        limits=HttpLimits(
            max_body_bytes=args.max_request_bytes,
            max_head_bytes=args.max_request_head_bytes,
            head_timeout=args.request_head_timeout,
            body_timeout=args.request_body_timeout,
            keepalive_timeout=args.keepalive_timeout,
            max_connections=args.max_connections,
            max_buffered_body_bytes=args.max_buffered_request_bytes,
        ),
        mirror_limit=args.mirror_limit,
        extra_headers={
            header: value for key, header in CORS_KEYS.items() if (value := getattr(args, key))
        },
        grpc_port=args.grpc_port,
        grpc_max_response_bytes=_positive_int(args.max_response_bytes, "--max-response-bytes"),
        grpc_keepalive=_positive(args.grpc_keepalive, "--grpc-keepalive"),
        grpc_max_connection_age=_positive(
            args.grpc_max_connection_age, "--grpc-max-connection-age"
        ),
        grpc_backends=_grpc_backends(backends, args.grpc_backend_port, args.grpc_backend),
        drain_seconds=args.drain_seconds,
        log_level=args.log_level,
        certificate=_certificate(args.certificate_file, args.private_key_file),
        certificate_reload_seconds=_positive(
            args.certificate_reload_seconds, "--certificate-reload-seconds"
        ),
        upstream_ca=_upstream_ca(args.upstream_ca, backends),
        upstream_ca_file=Path(args.upstream_ca) if args.upstream_ca else None,
        upstream_ca_reload_seconds=_positive(
            args.upstream_ca_reload_seconds, "--upstream-ca-reload-seconds"
        ),
        upstream_ca_grace_seconds=_positive(
            args.upstream_ca_grace_seconds, "--upstream-ca-grace-seconds"
        ),
    )


def _backends(flags: Sequence[str], env_value: str) -> dict[str, str]:
    if flags:
        return dict(_pair(flag, "--backend") for flag in flags)
    if not env_value:
        raise UsageError(f"no upstreams: give --backend VARIANT=URL or set ${BACKENDS_ENV}")
    try:
        entries = json.loads(env_value)
        return {str(entry["variant"]): str(entry["url"]) for entry in entries}
    except (ValueError, TypeError, KeyError) as exc:
        raise UsageError(
            f"${BACKENDS_ENV} must be a JSON list of {{variant, url}} objects: {exc}"
        ) from None


def _upstream_ca(path: str | None, backends: Mapping[str, str]) -> bytes | None:
    if path is None:
        return None
    if not any(url.startswith("https://") for url in backends.values()):
        raise UsageError("--upstream-ca verifies https:// backends, and no --backend is one")
    try:
        pem = read_pem(Path(path))
        ssl.create_default_context(cadata=pem.decode("ascii"))
    except (OSError, UnicodeDecodeError, ssl.SSLError, ValueError) as exc:
        raise UsageError(
            f"--upstream-ca {path}: not a readable PEM CA certificate ({exc})"
        ) from None
    return pem


def _certificate(certificate: str | None, key: str | None) -> ServingCertificate | None:
    if certificate is None and key is None:
        return None
    if certificate is None or key is None:
        raise UsageError("--certificate-file and --private-key-file go together: give both")
    try:
        return ServingCertificate(Path(certificate), Path(key))
    except CertificateError as exc:
        raise UsageError(f"--certificate-file, --private-key-file: {exc}") from None


def _pair(text: str, flag: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise UsageError(f"{flag} takes NAME=VALUE, got {text!r}")
    return name.strip(), value.strip()


def _positive(value: float, flag: str) -> float:
    if not value > 0:
        raise UsageError(f"{flag} must be greater than 0, got {value:g}")
    return value


def _positive_int(value: int, flag: str) -> int:
    if value <= 0:
        raise UsageError(f"{flag} must be greater than 0, got {value}")
    return value


def _int(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{flag}: {text!r} is not a whole number") from None


def main(argv: list[str]) -> int:
    try:
        settings = settings_from(argv, os.environ)
    except UsageError as exc:
        parser().print_usage()
        print(f"marfleet router: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(logging.getLevelNamesMapping()[settings.log_level.upper()])
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    return uvloop.run(run(settings))


def _grpc_backends(backends: Mapping[str, str], port: int, flags: Sequence[str]) -> dict[str, str]:
    """variant -> host:port of its gRPC listener: the --backend host and --grpc-backend-port,
    unless --grpc-backend names the address."""
    targets = {}
    for variant, url in backends.items():
        host = urlsplit(url).hostname or ""
        targets[variant] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    for flag in flags:
        variant, address = _pair(flag, "--grpc-backend")
        targets[variant] = address
    return targets
