"""The InferenceService spec as typed, fully defaulted values.

The apiserver already defaults and validates objects against crds/inferenceservice.yaml;
this module mirrors those defaults (a unit test keeps the two in step) so that renderers and
status code work on plain attributes, never on dict lookups with fallbacks, and so that
objects stored before a default was added still render the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

GROUP = "serving.marfleet.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "InferenceService"
PLURAL = "inferenceservices"

TARGET_DEFAULTS = {"requestsPerSecond": 100, "inflightRequests": 16, "cpu": 70}
"""targetPerReplica when the spec leaves it out, per metric (the CRD documents these)."""


@dataclass(frozen=True)
class Storage:
    """How `marfleet fetch` reaches an s3:// or gs:// URI; credentials only by reference."""

    secret_name: str = ""
    service_account_name: str = ""
    endpoint: str = ""
    region: str = ""
    addressing: str = "auto"
    anonymous: bool = False


@dataclass(frozen=True)
class Model:
    uri: str
    name: str
    version: str
    sha256: str
    storage: Storage = Storage()
    cache: bool = True
    """Use the node's model cache when the cluster admin configured one."""


@dataclass(frozen=True)
class Runtime:
    image: str
    workers_per_device: int
    max_batch_size: int
    max_batch_delay_ms: int
    queue_size: int
    response_timeout_seconds: int
    env: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class Variant:
    name: str
    weight: int
    model: Model
    runtime: Runtime


@dataclass(frozen=True)
class Accelerator:
    count: int
    resource_name: str
    products: tuple[str, ...]


@dataclass(frozen=True)
class Resources:
    requests: Mapping[str, str]
    limits: Mapping[str, str]
    accelerator: Accelerator


@dataclass(frozen=True)
class Autoscaling:
    min_replicas: int
    max_replicas: int
    metric: str
    target_per_replica: int
    engine: str
    scale_down_stabilization_seconds: int


@dataclass(frozen=True)
class Scheduling:
    node_selector: Mapping[str, str]
    tolerations: tuple[Mapping[str, Any], ...]
    affinity: Mapping[str, Any]
    priority_class_name: str


@dataclass(frozen=True)
class Tls:
    """TLS on the model servers' ports, from a kubernetes.io/tls Secret of the namespace; the
    router verifies the variants with `ca_key` of `ca_secret` (by default the same Secret)."""

    secret_name: str = ""
    ca_secret_name: str = ""
    ca_key: str = "ca.crt"

    @property
    def enabled(self) -> bool:
        return bool(self.secret_name)

    @property
    def ca_secret(self) -> str:
        return self.ca_secret_name or self.secret_name


@dataclass(frozen=True)
class InferenceService:
    name: str
    namespace: str
    uid: str
    generation: int
    variants: tuple[Variant, ...]
    resources: Resources
    autoscaling: Autoscaling
    scheduling: Scheduling
    tls: Tls = Tls()

    @property
    def multi_variant(self) -> bool:
        return len(self.variants) > 1


def parse(obj: Mapping[str, Any]) -> InferenceService:
    """Read an InferenceService object (as the API returns it) into typed values."""
    meta = obj["metadata"]
    spec = obj.get("spec") or {}
    base_runtime = spec.get("runtime") or {}
    variants = spec.get("variants") or []
    single = len(variants) == 1
    return InferenceService(
        name=meta["name"],
        namespace=meta.get("namespace", "default"),
        uid=meta.get("uid", ""),
        generation=int(meta.get("generation", 1)),
        variants=tuple(
            _variant(v, meta["name"], base_runtime, default_weight=100 if single else 0)
            for v in variants
        ),
        resources=_resources(spec.get("resources") or {}),
        autoscaling=_autoscaling(spec.get("autoscaling") or {}),
        scheduling=_scheduling(spec.get("scheduling") or {}),
        tls=_tls(spec.get("tls") or {}),
    )


def _tls(raw: Mapping[str, Any]) -> Tls:
    return Tls(
        secret_name=raw.get("secretName", ""),
        ca_secret_name=raw.get("caSecretName", ""),
        ca_key=raw.get("caKey", "ca.crt"),
    )


def _variant(
    raw: Mapping[str, Any], isvc_name: str, base: Mapping[str, Any], default_weight: int
) -> Variant:
    model = raw.get("model") or {}
    return Variant(
        name=raw["name"],
        weight=int(raw.get("weight", default_weight)),
        model=Model(
            uri=model["uri"],
            name=model.get("name") or isvc_name,
            version=str(model.get("version", "")),
            sha256=model.get("sha256", ""),
            storage=_storage(model.get("storage") or {}),
            cache=bool(model.get("cache", True)),
        ),
        runtime=_runtime(base, raw.get("runtime") or {}),
    )


def _storage(raw: Mapping[str, Any]) -> Storage:
    return Storage(
        secret_name=raw.get("secretName", ""),
        service_account_name=raw.get("serviceAccountName", ""),
        endpoint=raw.get("endpoint", ""),
        region=raw.get("region", ""),
        addressing=raw.get("addressing", "auto"),
        anonymous=bool(raw.get("anonymous", False)),
    )


def _runtime(base: Mapping[str, Any], override: Mapping[str, Any]) -> Runtime:
    def pick(key: str, default: Any) -> Any:
        return override.get(key, base.get(key, default))

    batching = {**(base.get("batching") or {}), **(override.get("batching") or {})}
    return Runtime(
        image=pick("image", ""),
        workers_per_device=int(pick("workersPerDevice", 1)),
        max_batch_size=int(batching.get("maxBatchSize", 8)),
        max_batch_delay_ms=int(batching.get("maxBatchDelayMs", 5)),
        queue_size=int(pick("queueSize", 1000)),
        response_timeout_seconds=int(pick("responseTimeoutSeconds", 120)),
        env=merge_env(base.get("env") or [], override.get("env") or []),
    )


def merge_env(*lists: Sequence[Mapping[str, Any]]) -> tuple[Mapping[str, Any], ...]:
    """Concatenate env lists; a later entry with the same name replaces an earlier one."""
    merged: dict[str, Mapping[str, Any]] = {}
    for entries in lists:
        for entry in entries:
            merged.pop(entry["name"], None)
            merged[entry["name"]] = dict(entry)
    return tuple(merged.values())


def _resources(raw: Mapping[str, Any]) -> Resources:
    accel = raw.get("accelerator") or {}
    return Resources(
        requests={k: str(v) for k, v in (raw.get("requests") or {}).items()},
        limits={k: str(v) for k, v in (raw.get("limits") or {}).items()},
        accelerator=Accelerator(
            count=int(accel.get("count", 0)),
            resource_name=accel.get("resourceName", "nvidia.com/gpu"),
            products=tuple(accel.get("products") or ()),
        ),
    )


def _autoscaling(raw: Mapping[str, Any]) -> Autoscaling:
    metric = raw.get("metric", "requestsPerSecond")
    return Autoscaling(
        min_replicas=int(raw.get("minReplicas", 1)),
        max_replicas=int(raw.get("maxReplicas", 10)),
        metric=metric,
        target_per_replica=int(raw.get("targetPerReplica", TARGET_DEFAULTS[metric])),
        engine=raw.get("engine", "hpa"),
        scale_down_stabilization_seconds=int(raw.get("scaleDownStabilizationSeconds", 300)),
    )


def _scheduling(raw: Mapping[str, Any]) -> Scheduling:
    return Scheduling(
        node_selector=dict(raw.get("nodeSelector") or {}),
        tolerations=tuple(dict(t) for t in raw.get("tolerations") or ()),
        affinity=dict(raw.get("affinity") or {}),
        priority_class_name=raw.get("priorityClassName", ""),
    )
