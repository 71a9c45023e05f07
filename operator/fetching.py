"""What the fetch init container gets: `marfleet fetch` arguments, credentials, volumes. Pure.

Kept apart from render.py because it is where a tenant's spec meets the node: every field an
InferenceService sets here is turned into something narrow — a URI and options as arguments,
a Secret *by reference* (env `secretKeyRef`, never a value, no volume), a PVC of the
URI's own claim read-only — and the node cache is mounted only where the cluster admin
configured one (chart value `modelCache`), as the namespace's own folder or claim: the spec can
only opt out. What may be referenced at all (Secrets, claims, ServiceAccounts) is the tenancy
policy's decision (tenancy.py), made before anything is rendered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from marfleet.runtime.storage.uri import parse as parse_uri

from .spec import Variant

MODEL_STORE = "/mnt/models"
PVC_ROOT = "/mnt/pvc"
CACHE_DIR = "/var/cache/marfleet/models"
S3_SECRET_KEYS = (
    ("AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID", False),
    ("AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY", False),
    ("AWS_SESSION_TOKEN", "AWS_SESSION_TOKEN", True),
)
"""(variable, Secret key, optional): KServe's key names, so its Secrets work as they are."""
GCS_SECRET_KEYS = (("GOOGLE_SERVICE_ACCOUNT_KEY", "gcloud-application-credentials.json", False),)
"""A service-account key (JSON) under KServe's key name, as obstore's variable for one: env
only, like S3, so the pod needs no secret volume."""


@dataclass(frozen=True)
class ModelCache:
    """The node cache as the cluster admin configured it (exactly one of the two is set)."""

    host_path: str = ""
    """A folder on every node; each namespace gets `<host_path>/<namespace>`."""
    claim: str = ""
    """A shared (ReadWriteMany) PersistentVolumeClaim of this name in each namespace."""
    max_bytes: int = 100 << 30


@dataclass
class FetchPod:
    args: list[str]
    env: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)
    volumes: list[dict[str, Any]] = field(default_factory=list)
    service_account: str = ""


def fetch_pod(variant: Variant, namespace: str, cache: ModelCache | None) -> FetchPod:
    model = variant.model
    source = parse_uri(model.uri)
    pod = FetchPod(
        args=["fetch", model.uri, MODEL_STORE],
        mounts=[
            {"name": "model-store", "mountPath": MODEL_STORE},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    )
    if model.sha256:
        pod.args += ["--sha256", model.sha256]
    if source.scheme == "pvc":
        pod.args += ["--pvc-root", PVC_ROOT]
        pod.volumes.append(
            {
                "name": "model-pvc",
                "persistentVolumeClaim": {"claimName": source.location, "readOnly": True},
            }
        )
        pod.mounts.append(
            {"name": "model-pvc", "mountPath": f"{PVC_ROOT}/{source.location}", "readOnly": True}
        )
    if source.scheme in ("s3", "gs"):
        _object_store(pod, variant, source.scheme)
    if cache is not None and model.cache:
        _cache(pod, namespace, cache)
    return pod


def _object_store(pod: FetchPod, variant: Variant, scheme: str) -> None:
    storage = variant.model.storage
    if storage.endpoint:
        pod.args += ["--endpoint", storage.endpoint]
    if scheme == "s3":
        if storage.region:
            pod.args += ["--region", storage.region]
        if storage.addressing != "auto":
            pod.args += ["--addressing", storage.addressing]
    if storage.anonymous:
        pod.args.append("--anonymous")
    pod.service_account = storage.service_account_name
    secret = storage.secret_name
    if not secret:
        return
    keys = S3_SECRET_KEYS if scheme == "s3" else GCS_SECRET_KEYS
    pod.env += [
        {
            "name": variable,
            "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": optional}},
        }
        for variable, key, optional in keys
    ]


def _cache(pod: FetchPod, namespace: str, cache: ModelCache) -> None:
    if cache.host_path:
        source: dict[str, Any] = {
            "hostPath": {
                "path": f"{cache.host_path.rstrip('/')}/{namespace}",
                "type": "DirectoryOrCreate",
            }
        }
    else:
        source = {"persistentVolumeClaim": {"claimName": cache.claim}}
    pod.volumes.append({"name": "model-cache", **source})
    pod.mounts.append({"name": "model-cache", "mountPath": CACHE_DIR})
    pod.args += ["--cache-dir", CACHE_DIR, "--cache-max-bytes", str(cache.max_bytes)]
