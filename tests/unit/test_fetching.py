"""Object-store URIs in the InferenceService: what the fetch init container gets, what the
tenancy policy allows, and a missing Secret as a condition (controller on the fake API).

The point of most of these: whatever a tenant writes in the spec, the rendered pod carries
credentials only by reference, mounts nothing of the node unless the cluster admin configured
the model cache, and runs as no ServiceAccount the admin did not allow."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any, cast

import pytest
from marfleet.operator import render, spec, tenancy
from marfleet.operator.controller import Controller, ControllerSettings
from marfleet.operator.fetching import ModelCache
from marfleet.operator.kube import KubeAPI
from marfleet.operator.metrics import OperatorMetrics
from marfleet.operator.spec import API_VERSION, KIND

from tests.unit.fakekube import FakeKubeAPI

NS = "team-a"
SECRET_VALUE = "AKIA-not-in-any-pod"
CTX = render.RenderContext(default_image="img")


def isvc(model: dict[str, Any], name: str = "m") -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": NS, "generation": 1, "uid": "u1"},
        "spec": {
            "variants": [{"name": "main", "weight": 100, "model": model}],
            "autoscaling": {"engine": "none", "minReplicas": 1},
        },
    }


def pod(obj: dict[str, Any], ctx: render.RenderContext = CTX) -> dict[str, Any]:
    desired = render.render(spec.parse(obj), ctx)
    (deployment,) = [o for o in desired.objects if o["kind"] == "Deployment"]
    template: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return template


def container(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    everything = [*pod_spec["initContainers"], *pod_spec["containers"]]
    found: dict[str, Any] = next(c for c in everything if c["name"] == name)
    return found


S3_MODEL = {
    "uri": "s3://models/resnet/resnet.mar",
    "storage": {
        "secretName": "s3-creds",
        "endpoint": "http://seaweedfs.storage:8333",
        "region": "eu-west-1",
        "addressing": "path",
    },
}


def test_s3_secret_reaches_only_the_fetch_container_and_only_by_reference() -> None:
    rendered = pod(isvc(S3_MODEL))
    fetch = container(rendered, "fetch-model")
    assert fetch["args"] == [
        "fetch",
        "s3://models/resnet/resnet.mar",
        "/mnt/models",
        "--endpoint",
        "http://seaweedfs.storage:8333",
        "--region",
        "eu-west-1",
        "--addressing",
        "path",
    ]
    assert fetch["env"] == [
        {
            "name": key,
            "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": key, "optional": optional}},
        }
        for key, optional in (
            ("AWS_ACCESS_KEY_ID", False),
            ("AWS_SECRET_ACCESS_KEY", False),
            ("AWS_SESSION_TOKEN", True),
        )
    ]
    server = container(rendered, "server")
    assert "s3-creds" not in json.dumps(server)
    assert "serviceAccountName" not in rendered
    assert rendered["automountServiceAccountToken"] is False


def test_gcs_secret_is_one_key_by_reference_in_the_fetch_container() -> None:
    model = {"uri": "gs://models/store/resnet/", "storage": {"secretName": "gcs-key"}}
    rendered = pod(isvc(model))
    fetch = container(rendered, "fetch-model")
    assert fetch["env"] == [
        {
            "name": "GOOGLE_SERVICE_ACCOUNT_KEY",
            "valueFrom": {
                "secretKeyRef": {
                    "name": "gcs-key",
                    "key": "gcloud-application-credentials.json",
                    "optional": False,
                }
            },
        }
    ]
    assert not [v for v in rendered["volumes"] if "secret" in v]
    assert "gcs-key" not in json.dumps(container(rendered, "server"))
    serve = container(rendered, "server")["args"]
    assert serve[serve.index("--models") + 1] == "m=resnet"  # the prefix's folder


def test_service_account_and_anonymous_options() -> None:
    model = {
        "uri": "s3://public/m.mar",
        "storage": {"serviceAccountName": "model-reader", "anonymous": True},
    }
    rendered = pod(isvc(model))
    assert rendered["serviceAccountName"] == "model-reader"
    assert rendered["automountServiceAccountToken"] is False
    assert container(rendered, "fetch-model")["args"][-1] == "--anonymous"
    assert "env" not in container(rendered, "fetch-model")


@pytest.mark.parametrize(
    ("cache", "volume"),
    [
        (
            ModelCache(host_path="/var/lib/marfleet/cache/"),
            {"hostPath": {"path": "/var/lib/marfleet/cache/team-a", "type": "DirectoryOrCreate"}},
        ),
        (ModelCache(claim="model-cache"), {"persistentVolumeClaim": {"claimName": "model-cache"}}),
    ],
)
def test_node_cache_is_where_the_admin_put_it_per_namespace(
    cache: ModelCache, volume: dict[str, Any]
) -> None:
    ctx = render.RenderContext(default_image="img", model_cache=cache)
    rendered = pod(isvc({"uri": "https://h/m.mar", "sha256": "a" * 64}), ctx)
    assert {"name": "model-cache", **volume} in rendered["volumes"]
    args = container(rendered, "fetch-model")["args"]
    assert args[args.index("--cache-dir") + 1] == "/var/cache/marfleet/models"
    assert "model-cache" not in json.dumps(container(rendered, "server"))
    opted_out = pod(isvc({"uri": "https://h/m.mar", "cache": False}), ctx)
    assert "model-cache" not in json.dumps(opted_out)


ALLOWED_VOLUME_SOURCES = {"emptyDir", "configMap", "persistentVolumeClaim"}


@pytest.mark.parametrize(
    "model",
    [
        S3_MODEL,
        {"uri": "gs://bkt/x/", "storage": {"secretName": "k", "endpoint": "https://h/../../etc"}},
        {"uri": "pvc://claim/dir/m.mar"},
        {"uri": "s3://bkt/m.mar", "storage": {"serviceAccountName": "sa"}, "cache": True},
    ],
)
def test_nothing_in_the_spec_widens_the_pod(model: dict[str, Any]) -> None:
    """No host mount, host namespace, privilege or token comes from an InferenceService."""
    rendered = pod(isvc(copy.deepcopy(model)))
    for volume in rendered["volumes"]:
        sources = set(volume) - {"name"}
        assert sources <= ALLOWED_VOLUME_SOURCES, volume
    for key in ("hostNetwork", "hostPID", "hostIPC", "hostUsers"):
        assert key not in rendered
    assert rendered["securityContext"] == render.POD_SECURITY
    assert rendered["automountServiceAccountToken"] is False
    for each in [*rendered["initContainers"], *rendered["containers"]]:
        assert each["securityContext"] == render.CONTAINER_SECURITY
        for env in each.get("env", []):
            ref = env.get("valueFrom", {})
            assert set(ref) <= {"secretKeyRef"}
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in rendered["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims in ([], ["claim"])
    secrets = {
        env["valueFrom"]["secretKeyRef"]["name"]
        for each in rendered["initContainers"]
        for env in each.get("env", [])
    }
    assert secrets <= {model.get("storage", {}).get("secretName")}
    assert "env" not in container(rendered, "server") or all(
        "valueFrom" not in env for env in container(rendered, "server")["env"]
    )


def test_tenancy_refuses_unlisted_secrets_and_service_accounts() -> None:
    obj = isvc(
        {"uri": "s3://b/m.mar", "storage": {"secretName": "s3", "serviceAccountName": "admin"}}
    )
    refused = [(r.field, r.rule) for r in tenancy.refusals(obj, tenancy.TenancyPolicy())]
    assert refused == [
        ("spec.variants[0].model.storage.secretName", "tenancy.secrets"),
        ("spec.variants[0].model.storage.serviceAccountName", "tenancy.serviceAccounts"),
    ]
    policy = tenancy.TenancyPolicy.from_json(
        json.dumps({"secrets": ["team-a/s3"], "serviceAccounts": ["team-*/admin"]})
    )
    assert tenancy.refusals(obj, policy) == ()
    other = copy.deepcopy(obj)
    other["metadata"]["namespace"] = "team-b"
    assert [r.field for r in tenancy.refusals(other, policy)] == [
        "spec.variants[0].model.storage.secretName"
    ]


def secret(name: str) -> dict[str, Any]:
    """A Secret of the namespace as the operator sees it (its metadata is all it reads)."""
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS}}


class SecretsAt:
    """A controller allowed the namespace's Secrets, over the fake API, reconciling `m`."""

    def __init__(self) -> None:
        self.api = FakeKubeAPI()
        policy = tenancy.TenancyPolicy(secrets=("team-a/*",))
        settings = ControllerSettings(render=CTX, identity="test", now=lambda: "T", tenancy=policy)
        self.controller = Controller(cast(KubeAPI, self.api), settings, OperatorMetrics())

    def reconcile(self, obj: dict[str, Any] | None = None) -> None:
        """Reconcile `m` once: `obj` newly applied, or the stored one again."""
        if obj is not None:
            self.controller.on_inferenceservice("ADDED", self.api.put(obj))
        else:
            stored = self.api.stored(API_VERSION, KIND, NS, "m")
            self.controller.on_inferenceservice("MODIFIED", stored)
        asyncio.run(self.controller.reconcile((NS, "m")))

    def condition(self, kind: str) -> dict[str, Any]:
        conditions = self.api.stored(API_VERSION, KIND, NS, "m")["status"]["conditions"]
        return dict(next(c for c in conditions if c["type"] == kind))

    def says_missing(self, kind: str, reason: str, message: str) -> str:
        """Assert `kind` is False for `reason`, its message starting with `message`, with a
        Warning Event of that reason; returns the whole message."""
        found = self.condition(kind)
        assert (found["status"], found["reason"]) == ("False", reason)
        assert found["message"].startswith(message), found["message"]
        events = [o for o in self.api.objects.values() if o["kind"] == "Event"]
        assert any(e["reason"] == reason for e in events)
        return str(found["message"])

    def deployments(self) -> set[str]:
        return {key[3] for key in self.api.objects if key[1] == "Deployment"}

    def secret_reads(self) -> list[tuple[str, ...]]:
        return sorted(call for call in self.api.calls if call[1] == "Secret")


def two_variants(model: dict[str, Any], tls: dict[str, str]) -> dict[str, Any]:
    obj = isvc(model)
    canary = copy.deepcopy(obj["spec"]["variants"][0])
    canary.update(name="canary", weight=10)
    obj["spec"]["variants"][0]["weight"] = 90
    obj["spec"]["variants"].append(canary)
    obj["spec"]["tls"] = tls
    return obj


def test_a_missing_secret_is_a_condition_and_an_event_then_is_noticed() -> None:
    at = SecretsAt()
    at.reconcile(isvc(S3_MODEL))
    at.says_missing(
        "ModelsReady",
        "StorageSecretMissing",
        "variant main: Secret team-a/s3-creds (model.storage.secretName) does not exist",
    )
    assert at.deployments() == set()
    assert at.secret_reads() == [("exists", "Secret", "s3-creds")]  # metadata, never the data

    at.api.put(secret("s3-creds"))
    at.reconcile()
    assert "m-main" in at.deployments()
    written = [o for o in at.api.objects.values() if o["kind"] != "Secret"]
    assert SECRET_VALUE not in json.dumps(written)


def test_a_missing_tls_secret_is_checked_once_and_leaves_every_variant_alone() -> None:
    at = SecretsAt()
    at.api.put(secret("s3-creds"))
    at.reconcile(two_variants(S3_MODEL, {"secretName": "serving-cert"}))
    message = at.says_missing(
        "ModelsReady",
        "TLSSecretMissing",
        "variant main: Secret team-a/serving-cert (tls.secretName) does not exist: create it "
        "with the variants' certificate and key (tls.crt, tls.key), or fix the name",
    )
    assert "variant canary: Secret team-a/serving-cert" in message
    assert not at.deployments() & {"m-main", "m-canary"}, "no variant's pod could start"
    # each Secret's metadata read once, however many variants mount it
    assert at.secret_reads() == [
        ("exists", "Secret", "s3-creds"),
        ("exists", "Secret", "serving-cert"),
    ]

    at.api.put(secret("serving-cert"))
    at.reconcile()
    assert {"m-main", "m-canary"} <= at.deployments()


def test_a_missing_router_ca_secret_is_named_in_traffic_ready() -> None:
    at = SecretsAt()
    at.api.put(secret("serving-cert"))
    tls = {"secretName": "serving-cert", "caSecretName": "cluster-ca"}
    at.reconcile(two_variants({"uri": "https://h/m.mar"}, tls))
    message = at.says_missing(
        "TrafficReady",
        "TLSSecretMissing",
        "Secret team-a/cluster-ca (tls.caSecretName) does not exist: create it with the CA that "
        "signed the variants' certificate under key ca.crt, or fix the name",
    )
    assert "Service m sends all traffic to variant 'main'" in message
    # the variants and the router are there: the router's pods start once the Secret exists
    assert {"m-main", "m-canary", "m-router"} <= at.deployments()

    at.api.put(secret("cluster-ca"))
    at.reconcile()
    assert at.condition("TrafficReady")["reason"] == "RouterNotReady"  # no router pod yet
