"""`marfleet operator`: command-line flags -> explicit settings -> the operator process.

Every flag also has an environment variable (the names the Helm chart sets), read here and
nowhere else; a flag given on the command line wins.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
from collections.abc import Mapping

import uvloop

from . import logs
from .app import OperatorSettings, run
from .controller import ControllerSettings
from .fetching import ModelCache
from .leader import LeaseSettings
from .render import RenderContext
from .rollout_loop import RolloutSettings
from .tenancy import TenancyPolicy

DEFAULT_IMAGE = "ghcr.io/marfleet/marfleet:0.1.0"


def parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="marfleet operator",
        description="Reconcile InferenceServices into Deployments, Services and autoscalers.",
    )
    watch = [n for n in env.get("MARFLEET_WATCH_NAMESPACES", "").split(",") if n.strip()]
    parser.add_argument(
        "--namespace",
        action="append",
        default=None,
        help="namespace to serve (repeatable; env MARFLEET_WATCH_NAMESPACES, comma-separated); "
        "default: all namespaces",
    )
    parser.set_defaults(watch_default=watch)
    parser.add_argument("--kubeconfig", default=None, help="default: in-cluster, then $KUBECONFIG")
    parser.add_argument(
        "--runtime-image",
        default=env.get("MARFLEET_RUNTIME_IMAGE", DEFAULT_IMAGE),
        help="model-server image when spec.runtime.image is empty (env MARFLEET_RUNTIME_IMAGE)",
    )
    parser.add_argument(
        "--runtime-gpu-image",
        default=env.get("MARFLEET_RUNTIME_CUDA_IMAGE", ""),
        help="model-server image for GPU variants (env MARFLEET_RUNTIME_CUDA_IMAGE); "
        "default: --runtime-image",
    )
    parser.add_argument(
        "--router-image",
        default=env.get("MARFLEET_ROUTER_IMAGE", ""),
        help="router image (env MARFLEET_ROUTER_IMAGE); default: --runtime-image",
    )
    parser.add_argument(
        "--cluster-domain", default=env.get("MARFLEET_CLUSTER_DOMAIN", "cluster.local")
    )
    parser.add_argument(
        "--prometheus-url",
        default=env.get(
            "MARFLEET_KEDA_PROMETHEUS_ADDRESS", "http://prometheus-operated.monitoring.svc:9090"
        ),
        help="Prometheus that KEDA ScaledObjects query (env MARFLEET_KEDA_PROMETHEUS_ADDRESS)",
    )
    parser.add_argument(
        "--keda-authentication-ref",
        default=env.get("MARFLEET_KEDA_AUTHENTICATION_REF", ""),
        help="KEDA TriggerAuthentication for Prometheus (env MARFLEET_KEDA_AUTHENTICATION_REF)",
    )
    parser.add_argument(
        "--service-monitor-label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="label added to ServiceMonitors so Prometheus selects them (repeatable)",
    )
    parser.add_argument(
        "--rollout-prometheus-url",
        default=env.get("MARFLEET_ROLLOUT_PROMETHEUS_URL", ""),
        help="Prometheus that rollout analysis reads (env MARFLEET_ROLLOUT_PROMETHEUS_URL); "
        "default: read the routers' /metrics directly",
    )
    parser.add_argument(
        "--router-metrics-url",
        default=env.get("MARFLEET_ROUTER_METRICS_URL", RolloutSettings.router_metrics_url),
        help="the routers' /metrics for rollout analysis without Prometheus ({isvc} and "
        "{namespace} are filled in; the host resolves to every router pod; env "
        "MARFLEET_ROUTER_METRICS_URL)",
    )
    parser.add_argument(
        "--rollout-interval",
        type=float,
        default=float(env.get("MARFLEET_ROLLOUT_INTERVAL", "5")),
        help="seconds between rollout checks (env MARFLEET_ROLLOUT_INTERVAL)",
    )
    parser.add_argument(
        "--no-service-monitors",
        action="store_true",
        default=env.get("MARFLEET_SERVICE_MONITORS", "true").lower() == "false",
        help="create no ServiceMonitor per InferenceService even where the Prometheus Operator "
        "is installed, because something else (the chart's PodMonitors) scrapes the pods "
        "(env MARFLEET_SERVICE_MONITORS=false)",
    )
    parser.add_argument(
        "--tenancy-policy",
        default=env.get("MARFLEET_TENANCY", ""),
        metavar="JSON",
        help="what InferenceServices may reference beyond marfleet's own images: the chart's "
        "`tenancy` values as JSON (env MARFLEET_TENANCY); default: nothing",
    )
    parser.add_argument(
        "--model-cache",
        default=env.get("MARFLEET_MODEL_CACHE", ""),
        metavar="JSON",
        help="the node model cache: the chart's `modelCache` values as JSON, "
        '{"hostPath": "/var/lib/...", "persistentVolumeClaim": "", "maxBytes": N} '
        "(env MARFLEET_MODEL_CACHE); default: none",
    )
    parser.add_argument("--workers", type=int, default=16, help="concurrent reconciliations")
    parser.add_argument("--resync-seconds", type=float, default=600.0)
    parser.add_argument("--host", default="0.0.0.0", help="address of /metrics and /healthz")
    parser.add_argument(
        "--port",
        type=int,
        default=int(env.get("MARFLEET_METRICS_PORT", "8080")),
        help="port of /metrics, /healthz and /readyz (env MARFLEET_METRICS_PORT)",
    )
    parser.add_argument(
        "--no-leader-election",
        action="store_true",
        help="act without holding the lease (only for a single replica)",
    )
    parser.add_argument(
        "--lease-namespace",
        default=env.get("MARFLEET_OPERATOR_NAMESPACE", "default"),
        help="namespace of the leader Lease (env MARFLEET_OPERATOR_NAMESPACE)",
    )
    parser.add_argument(
        "--lease-name",
        default=env.get("MARFLEET_LEASE_NAME", "marfleet-operator"),
        help="name of the leader Lease (env MARFLEET_LEASE_NAME)",
    )
    parser.add_argument("--lease-seconds", type=float, default=15.0)
    parser.add_argument("--log-level", default=env.get("MARFLEET_LOG_LEVEL", "info"))
    return parser


def settings_from(args: argparse.Namespace, env: Mapping[str, str]) -> OperatorSettings:
    identity = f"{env.get('MARFLEET_OPERATOR_POD_NAME') or socket.gethostname()}-{os.getpid()}"
    render = RenderContext(
        default_image=args.runtime_image,
        gpu_image=args.runtime_gpu_image,
        router_image=args.router_image,
        cluster_domain=args.cluster_domain,
        prometheus_url=args.prometheus_url,
        keda_authentication_ref=args.keda_authentication_ref,
        service_monitor_labels=dict(_key_value(item) for item in args.service_monitor_label),
        service_monitors=not args.no_service_monitors,
        model_cache=_model_cache(args.model_cache),
    )
    try:
        policy = TenancyPolicy.from_json(
            args.tenancy_policy,
            own_images=(render.default_image, render.gpu_image, render.router_image),
        )
    except ValueError as error:
        raise SystemExit(f"marfleet operator: --tenancy-policy: {error}") from None
    lease = None
    if not args.no_leader_election:
        lease = LeaseSettings(
            namespace=args.lease_namespace,
            name=args.lease_name,
            identity=identity,
            lease_seconds=args.lease_seconds,
            renew_deadline_seconds=args.lease_seconds * 2 / 3,
        )
    return OperatorSettings(
        controller=ControllerSettings(
            render=render,
            identity=identity,
            workers=args.workers,
            resync_seconds=args.resync_seconds,
            tenancy=policy,
        ),
        namespaces=tuple(args.namespace if args.namespace is not None else args.watch_default),
        kubeconfig=args.kubeconfig,
        host=args.host,
        port=args.port,
        lease=lease,
        rollout=RolloutSettings(
            prometheus_url=args.rollout_prometheus_url,
            router_metrics_url=args.router_metrics_url,
            interval=args.rollout_interval,
        ),
    )


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise SystemExit(f"marfleet operator: --service-monitor-label {item!r}: expected KEY=VALUE")
    return key, value


def main(argv: list[str]) -> int:
    env = dict(os.environ)
    args = parser(env).parse_args(argv)
    logs.configure(args.log_level)
    # uvloop, as the server and the router: its event loop and its TLS (every API call and
    # watch event is TLS) cost a fraction of asyncio's per call (docs/scale.md)
    return uvloop.run(run(settings_from(args, env)))


def _model_cache(text: str) -> ModelCache | None:
    """The chart's `modelCache` values (JSON); None when neither location is set."""
    try:
        raw = json.loads(text) if text.strip() else {}
        if not isinstance(raw, dict):
            raise ValueError("expected a JSON object")
        cache = ModelCache(
            host_path=str(raw.get("hostPath") or ""),
            claim=str(raw.get("persistentVolumeClaim") or ""),
            max_bytes=int(raw.get("maxBytes") or ModelCache.max_bytes),
        )
    except ValueError as error:
        raise SystemExit(f"marfleet operator: --model-cache: {error}") from None
    if cache.host_path and cache.claim:
        raise SystemExit(
            "marfleet operator: --model-cache: set hostPath or persistentVolumeClaim, not both"
        )
    if cache.host_path and not cache.host_path.startswith("/"):
        raise SystemExit("marfleet operator: --model-cache: hostPath must be an absolute path")
    return cache if cache.host_path or cache.claim else None
