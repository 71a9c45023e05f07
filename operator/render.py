"""InferenceService -> the manifests of every object it should become. Pure.

Templates (operator/templates/*.j2) hold the shape of each object; this module computes the
values that need decisions (GPU placement, env, probes, autoscaling metrics) and hands them
over as data, so a template never contains logic beyond "include this block or not". No
Kubernetes client here: the output is plain dicts, stamped with their intent hash, which the
controller applies and unit tests read field by field.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import jinja2
import orjson
import yaml
from marfleet.runtime.config import CORS_KEYS, ConfigError, ServerConfig, load_server_config
from marfleet.runtime.storage.uri import archive_filename, scheme_error

from . import fetching, labels, traffic
from .compare import stamp
from .spec import API_VERSION, KIND, Autoscaling, InferenceService, Variant, merge_env

# the runtime's ports; the router and the stable Service carry inference, metrics and grpc only:
# management (HTTP and gRPC, which want the management key) stays on the pods and variant Services
PORTS = {
    "inference": 8080,
    "management": 8081,
    "metrics": 8082,
    "grpc": 7070,
    "grpc-management": 7071,
}
MODEL_STORE = fetching.MODEL_STORE
CONFIG_DIR = "/etc/marfleet"
TLS_DIR = "/etc/marfleet/tls"
"""spec.tls: the certificate and key (tls.crt, tls.key), in the server containers (not the fetch
container) and the router's, which serve the InferenceService's clients with it."""
UPSTREAM_CA_DIR = "/etc/marfleet/upstream-ca"
"""spec.tls: the router's CA (only the Secret's caKey, as ca.crt), to verify the variants."""
ROUTER_BACKENDS_ENV = "MARFLEET_ROUTER_BACKENDS"
"""The router's variants and their Service URLs (JSON), read by `marfleet router`."""
TLS_FILE_MODE = 0o440  # read by the runtime user through the pod's fsGroup
DRAIN_SECONDS = 5
ROUTER_WAIT_MARGIN = 5  # seconds the router waits for an answer past a server's own limits
RUNTIME_UID = 1000
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_TAINT = "nvidia.com/gpu"

HPA_METRICS = {
    "requestsPerSecond": "marfleet_requests_per_second",
    "inflightRequests": "marfleet_inflight_requests",
}
"""Pods metrics served by prometheus-adapter under these names (docs/metrics.md)."""

KEDA_QUERIES = {
    "requestsPerSecond": "sum(rate(marfleet_requests_total{{{selector}}}[1m]))",
    "inflightRequests": "sum(marfleet_inflight_requests{{{selector}}})",
}

SCALE_UP: dict[str, Any] = {
    # Model servers take long to start and are expensive to thrash: grow fast, shrink slowly
    # (the scale-down window is the InferenceService's scaleDownStabilizationSeconds).
    "stabilizationWindowSeconds": 0,
    "selectPolicy": "Max",
    "policies": [
        {"type": "Percent", "value": 100, "periodSeconds": 30},
        {"type": "Pods", "value": 4, "periodSeconds": 30},
    ],
}
SCALE_DOWN_POLICIES: list[dict[str, Any]] = [
    {"type": "Percent", "value": 20, "periodSeconds": 60},
    {"type": "Pods", "value": 1, "periodSeconds": 60},
]


def scaling_behavior(scaling: Autoscaling) -> dict[str, Any]:
    """The HPA `behavior` shared by the HPA and KEDA's generated HPA."""
    return {
        "scaleUp": SCALE_UP,
        "scaleDown": {
            "stabilizationWindowSeconds": scaling.scale_down_stabilization_seconds,
            "selectPolicy": "Max",
            "policies": SCALE_DOWN_POLICIES,
        },
    }


POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": RUNTIME_UID,
    "runAsGroup": RUNTIME_UID,
    "fsGroup": RUNTIME_UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
}
SCRAPE_ANNOTATIONS = {
    "prometheus.io/scrape": "true",
    "prometheus.io/port": str(PORTS["metrics"]),
    "prometheus.io/path": "/metrics",
}


@dataclass(frozen=True)
class RenderContext:
    """What the renderers need beyond the InferenceService: operator settings and cluster facts."""

    default_image: str
    gpu_image: str = ""
    """Image for variants with GPUs when spec.runtime.image is empty (default: default_image)."""
    router_image: str = ""
    """Image of the router pods (default: default_image)."""
    cluster_domain: str = "cluster.local"
    keda_installed: bool = False
    service_monitor_installed: bool = False
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    keda_authentication_ref: str = ""
    """A KEDA TriggerAuthentication the Prometheus triggers use, if Prometheus needs one."""
    service_monitor_labels: Mapping[str, str] = field(default_factory=dict)
    service_monitors: bool = True
    """Create a ServiceMonitor per InferenceService where the CRD exists; off when the chart's
    PodMonitors scrape the pods instead (one scrape path, or every series counts twice)."""
    model_cache: fetching.ModelCache | None = None
    """The node model cache the chart configured (modelCache), if any."""


@dataclass(frozen=True)
class Missing:
    """Why a variant is left as it is: a Secret its pods would mount does not exist."""

    reason: str
    """The ModelsReady reason (status.STORAGE_SECRET_MISSING or status.TLS_SECRET_MISSING)."""
    message: str
    """What is missing and what to do."""


@dataclass(frozen=True)
class Desired:
    """Everything an InferenceService should become right now."""

    objects: tuple[dict[str, Any], ...]
    blocked: Mapping[str, str]
    """Variants that cannot be realised (variant -> reason); their objects are left as they are."""
    traffic: traffic.TrafficPlan
    missing: Mapping[str, Missing] = field(default_factory=dict)
    """Variants a Secret of whose does not exist (storage, TLS); left as they are."""
    router_missing: Missing | None = None
    """The router's CA Secret (tls.caSecretName) does not exist: its pods wait for it."""


def render(
    isvc: InferenceService,
    ctx: RenderContext,
    router_ready: bool = True,
    missing: Mapping[str, Missing] | None = None,
    router_missing: Missing | None = None,
) -> Desired:
    """`router_ready`: whether the router Deployment has an available pod (observed by the
    controller; see traffic.plan). `missing`: variants a Secret of whose (model.storage, tls)
    the controller did not find (their Deployments are not touched: a pod could not start).
    `router_missing`: the router's CA Secret, not found while no router pod is available (the
    router is rendered all the same: its pods start once the Secret exists)."""
    missing = dict(missing or {})
    plan = traffic.plan(isvc, router_ready)
    objects: list[dict[str, Any]] = []
    blocked: dict[str, str] = {}
    for variant in isvc.variants:
        problem = scheme_error(variant.model.uri)
        if problem is not None:
            blocked[variant.name] = problem
            continue
        if variant.name in missing:
            continue
        objects += variant_objects(isvc, variant, ctx)
    objects.append(stable_service(isvc, plan))
    if plan.uses_router:
        objects += router_access(isvc)
        objects.append(router_deployment(isvc, ctx))
        objects += router_availability(isvc)
    if ctx.service_monitors and ctx.service_monitor_installed:
        objects.append(service_monitor(isvc, ctx))
    return Desired(
        objects=tuple(stamp(o) for o in objects),
        blocked={**blocked, **{v: m.message for v, m in missing.items()}},
        traffic=plan,
        missing=missing,
        router_missing=router_missing,
    )


def url(isvc: InferenceService, ctx: RenderContext) -> str:
    return f"http://{isvc.name}.{isvc.namespace}.svc.{ctx.cluster_domain}"


def autoscaler_manages_replicas(isvc: InferenceService, ctx: RenderContext) -> bool:
    engine = isvc.autoscaling.engine
    return engine == "hpa" or (engine == "keda" and ctx.keda_installed)


def variant_objects(
    isvc: InferenceService, variant: Variant, ctx: RenderContext
) -> list[dict[str, Any]]:
    name = labels.variant_object_name(isvc, variant.name)
    properties = config_properties(isvc, variant)
    objects = [
        _template("configmap.yaml.j2", isvc, name, variant, properties=properties),
        deployment(isvc, variant, ctx, properties),
        variant_service(isvc, variant),
    ]
    engine = isvc.autoscaling.engine
    if engine == "hpa":
        objects.append(hpa(isvc, variant))
    elif engine == "keda" and ctx.keda_installed:
        objects.append(scaled_object(isvc, variant, ctx))
    if isvc.autoscaling.min_replicas > 1:
        objects.append(
            _template(
                "pdb.yaml.j2",
                isvc,
                name,
                variant,
                selector=labels.variant_selector(isvc, variant.name),
            )
        )
    return objects


def config_properties(isvc: InferenceService, variant: Variant) -> str:
    """The config.properties the variant's server reads (TorchServe keys)."""
    return (
        _environment()
        .get_template("config.properties.j2")
        .render(
            isvc=isvc,
            variant=variant,
            runtime=variant.runtime,
            accelerator=isvc.resources.accelerator,
            ports=PORTS,
            scheme="https" if isvc.tls.enabled else "http",
            tls=isvc.tls.enabled,
            tls_dir=TLS_DIR,
        )
    )


def deployment(
    isvc: InferenceService, variant: Variant, ctx: RenderContext, properties: str
) -> dict[str, Any]:
    name = labels.variant_object_name(isvc, variant.name)
    uri = variant.model.uri
    fetch = fetching.fetch_pod(variant, isvc.namespace, ctx.model_cache)
    serve_args = [
        "serve",
        "--foreground",
        "--ts-config",
        f"{CONFIG_DIR}/config.properties",
        "--model-store",
        MODEL_STORE,
        "--models",
        f"{variant.model.name}={archive_filename(uri)}",
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "model-store", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "shm", "emptyDir": {"medium": "Memory"}},
        {"name": "config", "configMap": {"name": name}},
        *fetch.volumes,
    ]
    tls_mounts = []
    if isvc.tls.enabled:
        volumes.append(_tls_volume(isvc))
        tls_mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
    config_hash = hashlib.sha256(properties.encode()).hexdigest()[:16]
    return _template(
        "deployment.yaml.j2",
        isvc,
        name,
        variant,
        replicas=None if autoscaler_manages_replicas(isvc, ctx) else isvc.autoscaling.min_replicas,
        annotations={
            labels.MODEL_REVISION: labels.model_revision(
                variant.name, variant.model.uri, variant.model.version
            )
        },
        selector=labels.variant_selector(isvc, variant.name),
        pod_annotations={
            **SCRAPE_ANNOTATIONS,
            labels.CONFIG_HASH: config_hash,
            "serving.marfleet.io/model-version": variant.model.version,
        },
        grace_seconds=DRAIN_SECONDS + variant.runtime.response_timeout_seconds + 5,
        drain_seconds=DRAIN_SECONDS,
        pod_security=POD_SECURITY,
        container_security=CONTAINER_SECURITY,
        scheduling=isvc.scheduling,
        tolerations=tolerations(isvc),
        affinity=affinity(isvc),
        image=variant.runtime.image or runtime_image(isvc, ctx),
        fetch_args=fetch.args,
        fetch_env=fetch.env,
        service_account=fetch.service_account,
        serve_args=serve_args,
        ports=PORTS,
        env=list(
            merge_env(
                [
                    {"name": "MARFLEET_VARIANT", "value": variant.name},
                    {"name": "HOME", "value": "/tmp"},
                ],
                variant.runtime.env,
            )
        ),
        resources=resources(isvc),
        fetch_mounts=fetch.mounts,
        server_mounts=[
            {"name": "model-store", "mountPath": MODEL_STORE, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "shm", "mountPath": "/dev/shm"},
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            *tls_mounts,
        ],
        volumes=volumes,
        tls=isvc.tls.enabled,
    )


def _tls_volume(isvc: InferenceService) -> dict[str, Any]:
    """spec.tls's certificate and key, for the servers and the router."""
    return _secret_volume("tls", isvc.tls.secret_name, {"tls.crt": "tls.crt", "tls.key": "tls.key"})


def _secret_volume(name: str, secret: str, keys: Mapping[str, str]) -> dict[str, Any]:
    """A volume of only `keys` (Secret key -> file name) of `secret`, readable by the pod's
    group alone."""
    return {
        "name": name,
        "secret": {
            "secretName": secret,
            "items": [{"key": key, "path": path} for key, path in keys.items()],
            "defaultMode": TLS_FILE_MODE,
        },
    }


def runtime_image(isvc: InferenceService, ctx: RenderContext) -> str:
    if isvc.resources.accelerator.count > 0 and ctx.gpu_image:
        return ctx.gpu_image
    return ctx.default_image


def resources(isvc: InferenceService) -> dict[str, Any]:
    """Requests and limits; a GPU count becomes a limit on the accelerator's resource."""
    spec = isvc.resources
    limits = dict(spec.limits)
    if spec.accelerator.count > 0:
        limits[spec.accelerator.resource_name] = str(spec.accelerator.count)
    result: dict[str, Any] = {}
    if spec.requests:
        result["requests"] = dict(spec.requests)
    if limits:
        result["limits"] = limits
    return result


def tolerations(isvc: InferenceService) -> list[dict[str, Any]]:
    result = [dict(t) for t in isvc.scheduling.tolerations]
    gpu = {"key": GPU_TAINT, "operator": "Exists"}
    if isvc.resources.accelerator.count > 0 and gpu not in result:
        result.append(gpu)
    return result


def affinity(isvc: InferenceService) -> dict[str, Any]:
    """The user's affinity, with GPU products added: required any-of, preferred in order."""
    result: dict[str, Any] = json.loads(json.dumps(isvc.scheduling.affinity))
    accel = isvc.resources.accelerator
    if accel.count == 0 or not accel.products:
        return result
    node = result.setdefault("nodeAffinity", {})
    products = {"key": GPU_PRODUCT_LABEL, "operator": "In", "values": list(accel.products)}
    required = node.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    terms = required.setdefault("nodeSelectorTerms", []) or [{}]
    for term in terms:
        term.setdefault("matchExpressions", []).append(products)
    required["nodeSelectorTerms"] = terms
    count = len(accel.products)
    preferred = node.setdefault("preferredDuringSchedulingIgnoredDuringExecution", [])
    for index, product in enumerate(accel.products):
        preferred.append(
            {
                "weight": round(100 * (count - index) / count),
                "preference": {
                    "matchExpressions": [
                        {"key": GPU_PRODUCT_LABEL, "operator": "In", "values": [product]}
                    ]
                },
            }
        )
    return result


def variant_service(isvc: InferenceService, variant: Variant) -> dict[str, Any]:
    return _template(
        "service.yaml.j2",
        isvc,
        labels.variant_object_name(isvc, variant.name),
        variant,
        extra_labels={labels.SCRAPE: "true"},
        selector=labels.variant_selector(isvc, variant.name),
        service_ports=[_service_port(port, port) for port in PORTS],
        headless=True,
    )


def stable_service(isvc: InferenceService, plan: traffic.TrafficPlan) -> dict[str, Any]:
    ports = [
        {"name": "http", "port": 80, "targetPort": "inference", "protocol": "TCP"},
        _service_port("inference", "inference"),
        _service_port("grpc", "grpc"),
    ]
    extra: dict[str, str] = {}
    if plan.uses_router:
        ports.append(_service_port("metrics", "metrics"))
        extra[labels.SCRAPE] = "true"
    return _template(
        "service.yaml.j2",
        isvc,
        isvc.name,
        component=labels.ENDPOINT,
        extra_labels=extra,
        selector=plan.selector,
        service_ports=ports,
        headless=False,
    )


def _service_port(name: str, target: str) -> dict[str, Any]:
    return {"name": name, "port": PORTS[name], "targetPort": target, "protocol": "TCP"}


def hpa(isvc: InferenceService, variant: Variant) -> dict[str, Any]:
    scaling = isvc.autoscaling
    metric: dict[str, Any]
    if scaling.metric == "cpu":
        metric = {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": scaling.target_per_replica},
            },
        }
    else:
        metric = {
            "type": "Pods",
            "pods": {
                "metric": {"name": HPA_METRICS[scaling.metric]},
                "target": {"type": "AverageValue", "averageValue": str(scaling.target_per_replica)},
            },
        }
    return _template(
        "hpa.yaml.j2",
        isvc,
        labels.variant_object_name(isvc, variant.name),
        variant,
        autoscaling=scaling,
        metric=metric,
        behavior=scaling_behavior(scaling),
    )


def scaled_object(isvc: InferenceService, variant: Variant, ctx: RenderContext) -> dict[str, Any]:
    scaling = isvc.autoscaling
    name = labels.variant_object_name(isvc, variant.name)
    trigger: dict[str, Any]
    if scaling.metric == "cpu":
        trigger = {
            "type": "cpu",
            "metricType": "Utilization",
            "metadata": {"value": str(scaling.target_per_replica)},
        }
    else:
        selector = f'namespace="{isvc.namespace}",pod=~"{name}-[a-z0-9]+-[a-z0-9]+"'
        trigger = {
            "type": "prometheus",
            "metadata": {
                "serverAddress": ctx.prometheus_url,
                "query": KEDA_QUERIES[scaling.metric].format(selector=selector),
                "threshold": str(scaling.target_per_replica),
            },
        }
        if ctx.keda_authentication_ref:
            trigger["authenticationRef"] = {"name": ctx.keda_authentication_ref}
    return _template(
        "scaledobject.yaml.j2",
        isvc,
        name,
        variant,
        autoscaling=scaling,
        trigger=trigger,
        behavior=scaling_behavior(scaling),
    )


def router_availability(isvc: InferenceService) -> list[dict[str, Any]]:
    """A PodDisruptionBudget keeping a router up through node drains, and a headless
    Service `<name>-router` whose DNS name lists every router pod (for reading their
    metrics during a rollout)."""
    name, selector = labels.router_name(isvc), labels.router_selector(isvc)
    return [
        _template("pdb.yaml.j2", isvc, name, component=labels.ROUTER, selector=selector),
        _template(
            "router-metrics-service.yaml.j2",
            isvc,
            name,
            component=labels.ROUTER,
            selector=selector,
            port=PORTS["metrics"],
        ),
    ]


def router_access(isvc: InferenceService) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding that let the router read its InferenceService."""
    return [
        _template(template, isvc, labels.router_name(isvc), component=labels.ROUTER)
        for template in (
            "router-serviceaccount.yaml.j2",
            "router-role.yaml.j2",
            "router-rolebinding.yaml.j2",
        )
    ]


def router_deployment(isvc: InferenceService, ctx: RenderContext) -> dict[str, Any]:
    # No weights here: the router follows them through the API, so a weight change never
    # changes (and so never restarts) the router's pods.
    tls = isvc.tls
    scheme = "https" if tls.enabled else "http"
    backends = [
        {
            "variant": v.name,
            "url": f"{scheme}://{labels.variant_object_name(isvc, v.name)}.{isvc.namespace}"
            f".svc.{ctx.cluster_domain}:{PORTS['inference']}",
        }
        for v in isvc.variants
    ]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    tls_args: list[str] = []
    if tls.enabled:
        # it serves the stable Service's clients with the variants' certificate, so the
        # endpoint speaks HTTPS whether it fronts the router or a single variant's pods
        volumes.append(_tls_volume(isvc))
        mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
        volumes.append(_secret_volume("upstream-ca", tls.ca_secret, {tls.ca_key: "ca.crt"}))
        mounts.append({"name": "upstream-ca", "mountPath": UPSTREAM_CA_DIR, "readOnly": True})
        tls_args = [
            *("--certificate-file", f"{TLS_DIR}/tls.crt"),
            *("--private-key-file", f"{TLS_DIR}/tls.key"),
            *("--upstream-ca", f"{UPSTREAM_CA_DIR}/ca.crt"),
        ]
    return _template(
        "router.yaml.j2",
        isvc,
        labels.router_name(isvc),
        component=labels.ROUTER,
        selector=labels.router_selector(isvc),
        pod_annotations=SCRAPE_ANNOTATIONS,
        pod_security=POD_SECURITY,
        container_security=CONTAINER_SECURITY,
        image=ctx.router_image or ctx.default_image,
        router_args=[
            traffic.ROUTER_SUBCOMMAND,
            "--isvc",
            isvc.name,
            "--grpc-port",
            str(PORTS["grpc"]),
            "--grpc-backend-port",
            str(PORTS["grpc"]),
            *router_limit_args(isvc),
            *tls_args,
            *router_cors_args(isvc),
        ],
        env=[
            {
                "name": "MARFLEET_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            },
            {"name": ROUTER_BACKENDS_ENV, "value": json.dumps(backends)},
        ],
        ports=PORTS,
        drain_seconds=DRAIN_SECONDS,
        mounts=mounts,
        volumes=volumes,
    )


def router_cors_args(isvc: InferenceService) -> list[str]:
    """The CORS headers the variants' servers send (TorchServe's `TS_CORS_*` variables in
    `runtime.env`), for the router's own answers too (its 502, 503 and 504), so a browser
    can read those: each value every variant sets alike, as a literal value."""
    args: list[str] = []
    for key in CORS_KEYS:
        values = {_literal_env(v, "TS_" + key.upper()) for v in isvc.variants}
        if len(values) == 1 and isinstance(value := values.pop(), str) and value:
            args += ["--" + key.replace("_", "-"), value]
    return args


ROUTER_FOLLOWS = (
    ("max_request_size", "--max-request-bytes"),
    ("max_response_size", "--max-response-bytes"),
    ("max_request_head_size", "--max-request-head-bytes"),
    ("request_head_timeout_seconds", "--request-head-timeout"),
    ("request_body_timeout_seconds", "--request-body-timeout"),
    ("keepalive_timeout_seconds", "--keepalive-timeout"),
    ("grpc_keepalive_seconds", "--grpc-keepalive"),
    ("grpc_max_connection_age_seconds", "--grpc-max-connection-age"),
)
"""Server keys (`TS_<KEY>` in runtime.env) whose largest value among the variants the router
takes as its flag of the same meaning."""


def router_limit_args(isvc: InferenceService) -> list[str]:
    """The router takes and waits for what every variant's server does, so a request one
    variant served alone is not refused once the router stands before it: each limit of
    `ROUTER_FOLLOWS` is the largest variant's (literal values in `runtime.env`, read by the
    server's own config parser; given only where it differs from the default), and it waits as
    long as a server may take to answer: a queue wait and a batch, each up to
    `responseTimeoutSeconds`."""
    defaults = ServerConfig()
    configs = [_server_settings(v) for v in isvc.variants]
    args: list[str] = []
    for key, flag in ROUTER_FOLLOWS:
        value = max(getattr(config, key) for config in configs)
        if value != getattr(defaults, key):
            args += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    wait = 2 * max(v.runtime.response_timeout_seconds for v in isvc.variants) + ROUTER_WAIT_MARGIN
    return [*args, "--response-timeout", str(wait)]


def _literal_env(variant: Variant, name: str) -> str | None:
    """The literal value `runtime.env` gives `name` (None when unset or from a reference)."""
    return next((e.get("value") for e in variant.runtime.env if e.get("name") == name), None)


def _server_settings(variant: Variant) -> ServerConfig:
    """What the variant's servers take from the literal `TS_*` values of its env (the rendered
    config.properties enables them); the defaults where one does not parse (the server refuses
    it at start and names it)."""
    env = {
        e["name"]: e["value"]
        for e in variant.runtime.env
        if e.get("name", "").startswith("TS_") and isinstance(e.get("value"), str)
    }
    try:
        return load_server_config({"enable_envvars_config": "true"}, env)
    except ConfigError:
        return ServerConfig()


def service_monitor(isvc: InferenceService, ctx: RenderContext) -> dict[str, Any]:
    return _template(
        "servicemonitor.yaml.j2",
        isvc,
        isvc.name,
        component=labels.ENDPOINT,
        extra_labels=dict(ctx.service_monitor_labels),
        selector={labels.ISVC: isvc.name, labels.SCRAPE: "true"},
    )


def _template(
    template: str,
    isvc: InferenceService,
    name: str,
    variant: Variant | None = None,
    *,
    component: str = labels.RUNTIME,
    extra_labels: Mapping[str, str] | None = None,
    **values: Any,
) -> dict[str, Any]:
    """Render one template into a manifest.

    Every value a template inserts goes through its `json` filter. While rendering here the
    filter records the value and inserts a numbered placeholder instead, so the YAML text
    (the skeleton) is the same for every InferenceService that takes the same branches: it
    is parsed once per process (YAML parsing is most of a render's cost), and each render
    fills the placeholders of a fresh copy with its own values (`_fill`)."""
    base = labels.variant_labels(isvc, variant.name) if variant else labels.common(isvc, component)
    recorded: list[Any] = []
    token = _RECORDING.set(recorded)
    try:
        text = (
            _environment()
            .get_template(template)
            .render(
                isvc=isvc,
                owner={"apiVersion": API_VERSION, "kind": KIND},
                name=name,
                labels={**base, **(extra_labels or {})},
                **values,
            )
        )
    finally:
        _RECORDING.reset(token)
    filled = _fill(_skeleton(text), [_fresh(v) for v in recorded])
    if not isinstance(filled, dict):
        raise ValueError(f"template {template} did not render a mapping")
    return filled


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_RECORDING: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar(
    "marfleet_render_recording", default=None
)
_PLACEHOLDER = f"marfleet-value-{secrets.token_hex(8)}-"
"""Prefix of a recorded value's placeholder; random per process, so that no value in a spec
can look like one."""


def _fresh(value: Any) -> Any:
    """`value` as JSON would carry it (tuples become lists), sharing nothing mutable."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return orjson.loads(orjson.dumps(value))


def _json_filter(value: Any) -> str:
    recorded = _RECORDING.get()
    if recorded is None:
        return json.dumps(value, sort_keys=False)
    recorded.append(value)
    return f'"{_PLACEHOLDER}{len(recorded) - 1}"'  # letters, digits and dashes: no escapes


@lru_cache(maxsize=512)
def _skeleton(text: str) -> Any:
    return yaml.load(text, Loader=_LOADER)


def _fill(node: Any, values: list[Any]) -> Any:
    """A fresh copy of a parsed skeleton with every placeholder replaced by its value; a
    placeholder anywhere but as a whole value is a template error."""
    if isinstance(node, dict):
        return {key: _fill(value, values) for key, value in node.items()}
    if isinstance(node, list):
        return [_fill(item, values) for item in node]
    if isinstance(node, str) and _PLACEHOLDER in node:
        index = node[len(_PLACEHOLDER) :]
        if not node.startswith(_PLACEHOLDER) or not index.isdigit():
            raise ValueError(f"a template uses a `json` value inside a longer string: {node!r}")
        return values[int(index)]
    return node


def load_templates() -> None:
    """Compile every template now, at start: a broken one stops the operator before it leads,
    and the first InferenceServices do not wait for the compiler."""
    env = _environment()
    for name in env.list_templates():
        env.get_template(name)


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        auto_reload=False,  # the templates ship with the code: no stat() per render
    )
    env.filters["json"] = _json_filter
    return env
