"""Multi-tenant safety on the local control plane: a tenant who may only create and edit
InferenceServices in one namespace gains nothing through the operator.

The chart is installed by the admin (with one Secret allowed); the real operator runs with
nothing but the chart's ServiceAccount token; the tenant is the user `tenant` (impersonated),
bound to a Role over InferenceServices in its namespace and nothing else. Each attack of
issue 22 is one test; the InferenceServices they use are applied together by one fixture, so
the operator reconciles them all at once. What the CRD refuses on its own (env sizes,
toleration and affinity shapes, `*-router` variant names) is in test_operator_crd.py.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from marfleet.runtime.router.metrics import RouterMetrics

from e2e.localcluster import LocalCluster
from e2e.localcluster.toolchain import KUBERNETES
from e2e.prometheus import chart
from e2e.support import free_port, terminate, wait_for
from tests.integration.test_chart_install import helm, start_chart_operator
from tests.integration.test_operator_crd import install_crd

pytestmark = pytest.mark.slow

RELEASE = "marfleet-tenancy"
NAMESPACE = "marfleet-tenancy"
SERVICE_ACCOUNT = RELEASE
TENANT = "tenant"
API = "serving.marfleet.io/v1alpha1"
ROLLOUT = {
    "steps": [50, 100],
    "stepSeconds": 1,
    "analysis": {"maxErrorRatio": 0.5, "minRequests": 20},
}


# ----- fake routers: what the rollout loop reads, per InferenceService -----


@dataclass
class Routers:
    """/<namespace>/<isvc>/metrics on loopback: `fast` answers like a router whose canary
    serves well; `slow` trickles a byte every 0.5 s and never finishes; every request is
    counted per InferenceService."""

    hits: dict[str, int] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    metrics: dict[str, RouterMetrics] = field(default_factory=dict)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        routers = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                _, namespace, isvc, _ = self.path.split("/", 3)
                routers.hits[isvc] = routers.hits.get(isvc, 0) + 1
                if isvc == "slow":
                    self.send_response(200)
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    while not routers.stop.wait(0.5):
                        try:
                            self.wfile.write(b"#")
                            self.wfile.flush()
                        except OSError:
                            return
                    return
                metrics = routers.metrics.setdefault(
                    isvc, RouterMetrics(isvc=isvc, namespace=namespace)
                )
                for variant in ("stable", "canary"):
                    for _ in range(10):
                        metrics.for_variant(variant).answered(200, 0.01)
                body = metrics.render()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        return Handler


@pytest.fixture(scope="module")
def routers() -> Iterator[tuple[Routers, int]]:
    state = Routers()
    server = ThreadingHTTPServer(("127.0.0.1", 0), state.handler())
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, server.server_address[1]
    finally:
        state.stop.set()
        server.shutdown()
        server.server_close()


# ----- the admin's install, the tenant, the operator -----


@dataclass
class Tenancy:
    cluster: LocalCluster
    namespace: str
    operator_kubeconfig: Path
    log: Path

    def as_tenant(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl(
            "--as", TENANT, "-n", self.namespace, *args, input=input, check=False
        )

    def as_operator(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        command = [str(KUBERNETES.path("kubectl")), "--kubeconfig", str(self.operator_kubeconfig)]
        return subprocess.run(
            [*command, *args], input=input, capture_output=True, text=True, timeout=60
        )

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        got = self.cluster.kubectl(
            "get", kind, name, "-n", self.namespace, "-o", "json", check=False
        )
        return json.loads(got.stdout) if got.returncode == 0 else None

    def condition(self, name: str, kind: str = "Ready") -> dict[str, Any]:
        obj = self.get("inferenceservice", name) or {}
        conditions = (obj.get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == kind), {})

    def wait_condition(self, name: str, reason: str, timeout: float = 30) -> dict[str, Any]:
        found: dict[str, Any] = wait_for(
            lambda: self.condition(name).get("reason") == reason and self.condition(name),
            timeout,
            f"{name}: Ready reason {reason}; now {self.condition(name)}; operator log:\n"
            + self.log.read_text(errors="replace")[-2000:],
        )
        return found

    def events(self, name: str, reason: str) -> list[str]:
        got = self.cluster.kubectl(
            "get",
            "events",
            "-n",
            self.namespace,
            "-o",
            "json",
            "--field-selector",
            f"involvedObject.name={name},reason={reason}",
        )
        return [e["message"] for e in json.loads(got.stdout)["items"]]

    def rollout(self, name: str) -> dict[str, Any]:
        obj = self.get("inferenceservice", name) or {}
        rollout: dict[str, Any] = (obj.get("status") or {}).get("rollout") or {}
        return rollout


def isvc(name: str, *variants: str, **spec: Any) -> dict[str, Any]:
    names = variants or ("main",)
    return {
        "apiVersion": API,
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {
            "variants": [
                {
                    "name": v,
                    "weight": 100 if i == 0 else 0,
                    "model": {"uri": f"https://m.example/{name}-{v}.mar"},
                }
                for i, v in enumerate(names)
            ],
            "autoscaling": {"engine": "none"},
            **spec,
        },
    }


def secret_env(name: str) -> dict[str, Any]:
    return {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": name, "key": "token"}}}


GREEDY = isvc(
    "greedy",
    runtime={
        "image": "evil.example/miner:1",
        "env": [
            secret_env("admin-token"),
            {"name": "CFG", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "k"}}},
        ],
    },
    scheduling={
        "nodeSelector": {"node-role.kubernetes.io/control-plane": ""},
        "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}],
        "priorityClassName": "system-node-critical",
    },
)
GREEDY["spec"]["variants"][0]["model"]["uri"] = "pvc://finance-data/books.mar"

TENANT_OBJECTS = [
    GREEDY,
    isvc("allowed", runtime={"env": [secret_env("allowed-token")]}),
    isvc("foo", "stable", autoscaling={"engine": "hpa", "minReplicas": 1, "maxReplicas": 6}),
    isvc("edge", "a", "b"),
    isvc("a", "b"),
    isvc("broken"),
    isvc("slow", "stable", "canary", rollout=ROLLOUT),
    isvc("fast", "stable", "canary", rollout=ROLLOUT),
    isvc("x-y", "stable", "canary", rollout=ROLLOUT),
]

FOREIGN = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: foo-stable}
spec:
  replicas: 5
  selector: {matchLabels: {app: foreign}}
  template:
    metadata: {labels: {app: foreign}}
    spec: {containers: [{name: c, image: registry.example/foreign:1}]}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: edge-router}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: edge-admin}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: admin}
subjects: [{kind: ServiceAccount, name: edge-router}]
---
apiVersion: v1
kind: Service
metadata: {name: x-y-router}
spec: {clusterIP: None, selector: {app: foreign}, ports: [{name: metrics, port: 8082}]}
"""

TENANT_ROLE = """
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: inferenceservice-author}
rules:
- apiGroups: [serving.marfleet.io]
  resources: [inferenceservices]
  verbs: [get, list, watch, create, update, patch, delete]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: inferenceservice-author}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: inferenceservice-author}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: tenant}]
"""


def dead_webhook(name: str) -> str:
    """Every Deployment write for InferenceService `broken` goes to a webhook nobody serves:
    the API server answers 500 (a fault the operator cannot fix by retrying at once)."""
    return json.dumps(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [
                {
                    "name": "down.tenancy.test",
                    "admissionReviewVersions": ["v1"],
                    "sideEffects": "None",
                    "failurePolicy": "Fail",
                    "timeoutSeconds": 2,
                    "clientConfig": {"url": f"https://127.0.0.1:{free_port()}/validate"},
                    "objectSelector": {
                        "matchLabels": {"serving.marfleet.io/inferenceservice": "broken"}
                    },
                    "rules": [
                        {
                            "apiGroups": ["apps"],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE", "UPDATE"],
                            "resources": ["deployments"],
                        }
                    ],
                }
            ],
        }
    )


@pytest.fixture(scope="module")
def tenancy(
    cluster: LocalCluster,
    tmp_path_factory: pytest.TempPathFactory,
    routers: tuple[Routers, int],
) -> Iterator[Tenancy]:
    install_crd(cluster)
    namespace = f"team-{uuid.uuid4().hex[:6]}"
    webhook = f"tenancy-down-{namespace}"
    values = {"operator.replicas": "1", "tenancy.secrets": f"{{{namespace}/allowed-token}}"}
    sets = [f"--set={key}={value}" for key, value in values.items()]
    helm(
        cluster,
        "install",
        RELEASE,
        str(chart.CHART_DIR),
        "-n",
        NAMESPACE,
        *sets,
        "--create-namespace",
        "--wait",
        "--timeout",
        "120s",
    )
    cluster.kubectl("create", "namespace", namespace)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=TENANT_ROLE + "---" + FOREIGN)
    cluster.kubectl("create", "-f", "-", input=dead_webhook(webhook))
    workdir = tmp_path_factory.mktemp("tenancy")
    kubeconfig = cluster.service_account_kubeconfig(
        NAMESPACE, SERVICE_ACCOUNT, workdir / "operator.kubeconfig", duration="1h"
    )
    state = Tenancy(cluster, namespace, kubeconfig, workdir / "operator.log")
    for obj in TENANT_OBJECTS:
        applied = state.as_tenant("apply", "-f", "-", input=json.dumps(obj))
        assert applied.returncode == 0, applied.stderr
    process = start_chart_operator(
        kubeconfig,
        state.log,
        "--router-metrics-url",
        f"http://127.0.0.1:{routers[1]}/{{namespace}}/{{isvc}}/metrics",
        "--rollout-interval",
        "0.5",
        release=RELEASE,
        namespace=NAMESPACE,
        values=values,
    )
    try:
        yield state
    finally:
        terminate(process)
        cluster.kubectl("delete", "validatingwebhookconfiguration", webhook, "--ignore-not-found")
        cluster.kubectl("delete", "namespace", namespace, "--wait=false")
        helm(cluster, "uninstall", RELEASE, "--namespace", NAMESPACE, "--ignore-not-found")


# ----- attacks 1-3: references beyond the object, refused by the admin's allow-lists -----


def refused_fields(tenancy: Tenancy) -> str:
    ready = tenancy.wait_condition("greedy", "PolicyRefused")
    assert ready["status"] == "False"
    assert tenancy.get("deployment", "greedy-main") is None
    message: str = ready["message"]
    return message


def test_env_from_a_secret_or_configmap_is_refused(tenancy: Tenancy) -> None:
    message = refused_fields(tenancy)
    assert (
        "spec.runtime.env[0].valueFrom.secretKeyRef.name: Secret "
        f"{tenancy.namespace}/admin-token is not allowed (rule tenancy.secrets)"
    ) in message
    assert "spec.runtime.env[1].valueFrom.configMapKeyRef.name" in message
    events = wait_for(lambda: tenancy.events("greedy", "PolicyRefused"), 10, "events")
    assert any("secretKeyRef" in e and "tenancy.secrets" in e for e in events), events


def test_a_claim_of_the_namespace_is_not_mounted(tenancy: Tenancy) -> None:
    message = refused_fields(tenancy)
    assert (
        f"spec.variants[0].model.uri: PersistentVolumeClaim {tenancy.namespace}/finance-data "
        "is not allowed (rule tenancy.persistentVolumeClaims)"
    ) in message


def test_placement_and_priority_beyond_the_allowed_are_refused(tenancy: Tenancy) -> None:
    message = refused_fields(tenancy)
    for fragment in (
        "spec.scheduling.nodeSelector.node-role.kubernetes.io/control-plane",
        "spec.scheduling.tolerations[0].key",
        "spec.scheduling.priorityClassName: PriorityClass 'system-node-critical'",
        "spec.runtime.image: image 'evil.example/miner:1'",
    ):
        assert fragment in message, message


def test_what_the_admin_allows_reaches_the_pods(tenancy: Tenancy) -> None:
    tenancy.wait_condition("allowed", "Ready")
    deployment = tenancy.get("deployment", "allowed-main")
    assert deployment is not None
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    assert secret_env("allowed-token") in env


# ----- attack 4: names someone else holds -----


def test_no_autoscaler_for_a_deployment_someone_else_owns(tenancy: Tenancy) -> None:
    ready = tenancy.wait_condition("foo", "ApplyFailed")
    assert (
        "Deployment foo-stable already exists and is not this InferenceService's"
        in (ready["message"])
    )
    assert tenancy.get("horizontalpodautoscaler", "foo-stable") is None
    assert tenancy.get("service", "foo-stable") is None
    foreign = tenancy.get("deployment", "foo-stable")
    assert foreign is not None and foreign["spec"]["replicas"] == 5
    assert not foreign["metadata"].get("ownerReferences")


def test_no_role_binding_to_a_service_account_someone_else_owns(tenancy: Tenancy) -> None:
    ready = tenancy.wait_condition("edge", "ApplyFailed")
    assert "ServiceAccount edge-router already exists" in ready["message"]
    for kind in ("role", "rolebinding", "deployment"):
        assert tenancy.get(kind, "edge-router") is None, kind


def test_child_names_do_not_collide_across_inferenceservices(tenancy: Tenancy) -> None:
    """`a` with variant `b` holds Service a-b; InferenceService `a-b` would need it too."""
    tenancy.wait_condition("a", "Ready")
    created = tenancy.as_tenant("apply", "-f", "-", input=json.dumps(isvc("a-b")))
    assert created.returncode == 0, created.stderr
    ready = tenancy.wait_condition("a-b", "ApplyFailed")
    assert "Service a-b already exists and is not this InferenceService's" in ready["message"]
    assert tenancy.get("deployment", "a-b-main") is None
    service = tenancy.get("service", "a-b")
    assert service is not None
    assert service["spec"]["selector"]["serving.marfleet.io/inferenceservice"] == "a"


# ----- attack 6: the rollout loop reads only owned routers, each under a deadline -----


def test_rollouts_read_only_owned_routers_and_a_slow_one_delays_no_other(
    tenancy: Tenancy, routers: tuple[Routers, int]
) -> None:
    fake, _ = routers
    try:
        wait_for(lambda: tenancy.rollout("fast").get("phase") == "Succeeded", 40, "fast")
    except AssertionError as late:
        fast, slow = tenancy.rollout("fast"), tenancy.rollout("slow")
        raise AssertionError(f"rollout of fast did not succeed: {fast}; slow: {slow}") from late
    assert tenancy.rollout("slow").get("phase") == "Progressing"
    wait_for(
        lambda: "no complete answer within 10s" in tenancy.rollout("slow").get("message", ""),
        30,
        "the slow router's reading to be cut off",
    )
    held = tenancy.rollout("x-y")
    assert (held.get("phase"), held.get("weight")) == ("Progressing", 0), held
    assert fake.hits.get("x-y", 0) == 0, "the pods behind someone else's x-y-router were read"


# ----- attack 7: an error that will not go away by retrying at once -----


def test_a_server_error_becomes_a_condition_and_backs_off(tenancy: Tenancy) -> None:
    ready = tenancy.wait_condition("broken", "ApplyFailed")
    assert "Deployment broken-main:" in ready["message"]
    assert "failed calling webhook" in ready["message"]
    wait_for(
        lambda: any("failed calling webhook" in e for e in tenancy.events("broken", "ApplyFailed")),
        10,
        "the ApplyFailed event",
    )
    time.sleep(4)
    retries = [
        entry["retry_in"]
        for entry in map(json.loads, tenancy.log.read_text().splitlines())
        if entry.get("message") == "reconcile failed, will retry"
        and entry.get("isvc") == f"{tenancy.namespace}/broken"
    ]
    assert len(retries) >= 2 and retries == sorted(retries) and retries[-1] > retries[0], retries


# ----- the chart's RBAC: what a stolen operator token can do -----


def owned_by_isvc(tenancy: Tenancy, obj: dict[str, Any], owner: str = "allowed") -> str:
    uid = (tenancy.get("inferenceservice", owner) or {})["metadata"]["uid"]
    reference = {
        "apiVersion": API,
        "kind": "InferenceService",
        "name": owner,
        "uid": uid,
        "controller": True,
    }
    obj["metadata"] = {
        **obj["metadata"],
        "namespace": tenancy.namespace,
        "ownerReferences": [reference],
    }
    return json.dumps(obj)


def deployment(name: str, **pod: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "registry.example/x:1"}], **pod},
            },
        },
    }


def test_the_operator_token_cannot_bind_a_role_to_another_subject(tenancy: Tenancy) -> None:
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "allowed-router"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": f"{RELEASE}-operator",
        },
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "mallory"}],
    }
    result = tenancy.as_operator(
        "create", "--dry-run=server", "-f", "-", input=owned_by_isvc(tenancy, binding)
    )
    assert result.returncode != 0
    assert "binds only a router's own Role to the router's own ServiceAccount" in result.stderr


@pytest.mark.parametrize(
    ("where", "pod", "owned", "refusal"),
    [
        ("kube-system", {}, False, "does not write in namespace kube-system"),
        (NAMESPACE, {}, False, f"does not write in namespace {NAMESPACE}"),
        ("tenant", {}, False, "writes only objects an InferenceService controls"),
        (
            "tenant",
            {"serviceAccountName": "edge-router"},
            True,
            "run as their own Deployment's ServiceAccount or without a token",
        ),
        (
            "tenant",
            {
                "automountServiceAccountToken": False,
                "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
            },
            True,
            "no host namespaces, host paths (but the model cache's)",
        ),
    ],
    ids=["kube-system", "release namespace", "not owned", "foreign account", "host path"],
)
def test_the_operator_token_cannot_create_deployments_beyond_its_job(
    tenancy: Tenancy, where: str, pod: dict[str, Any], owned: bool, refusal: str
) -> None:
    namespace = tenancy.namespace if where == "tenant" else where
    obj = deployment("intruder", **pod)
    text = owned_by_isvc(tenancy, obj) if owned else json.dumps(obj)
    result = tenancy.as_operator(
        "create", "--dry-run=server", "-n", namespace, "-f", "-", input=text
    )
    assert result.returncode != 0, f"created in {namespace}"
    assert refusal in result.stderr, result.stderr


def test_addon_rights_only_where_the_addon_apis_exist(tenancy: Tenancy) -> None:
    for resource in ("scaledobjects.keda.sh", "servicemonitors.monitoring.coreos.com"):
        answer = tenancy.as_operator(
            "auth", "can-i", "create", resource, "-n", tenancy.namespace
        ).stdout.strip()
        assert answer == "no", resource
