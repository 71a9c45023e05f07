"""The operator as it runs: a real `marfleet operator` process against a real apiserver with
KWOK nodes, driven with kubectl and read back through the API.

Each test works in its own namespace. One operator process serves the module; tests that
restart it or start a second replica leave a running leader behind for the next test.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from marfleet.operator.cli import parser, settings_from
from marfleet.operator.controller import Controller
from marfleet.operator.kube import KubeAPI
from marfleet.operator.leader import LeaderElector, LeaseSettings
from marfleet.operator.metrics import OperatorMetrics

from e2e.localcluster import LocalCluster
from e2e.support import free_port, wait_for
from tests.integration.test_operator_crd import install_crd

pytestmark = pytest.mark.slow

MARFLEET = str(Path(sys.executable).with_name("marfleet"))
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "resnet50-canary.yaml"
GROUP, VERSION, PLURAL = "serving.marfleet.io", "v1alpha1", "inferenceservices"
ISVC_LABEL = "serving.marfleet.io/inferenceservice"
LEASE_SECONDS = "6"
RUNTIME_IMAGE = "registry.example/marfleet:test"


@dataclass
class OperatorProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, ""
        except OSError:
            return 0, ""

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        _, text = self.get("/metrics")
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            head, value = line.rsplit(" ", 1)
            metric, _, label_text = head.partition("{")
            if metric != name:
                continue
            if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
                total += float(value)
        return total

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])


class Operators:
    """Starts operator processes against the cluster and stops every one of them at the end."""

    def __init__(self, cluster: LocalCluster, logs: Path) -> None:
        self.cluster = cluster
        self.logs = logs
        self.started: list[OperatorProcess] = []
        self.current: OperatorProcess | None = None

    def start(
        self,
        *,
        leader: bool = True,
        kubeconfig: Path | None = None,
        lease: tuple[str, str] = ("default", "marfleet-operator-test"),
    ) -> OperatorProcess:
        port = free_port()
        extra = ["--kubeconfig", str(kubeconfig)] if kubeconfig else []
        log = self.logs / f"operator-{len(self.started)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    MARFLEET,
                    "operator",
                    "--port",
                    str(port),
                    "--host",
                    "127.0.0.1",
                    "--lease-namespace",
                    lease[0],
                    "--lease-name",
                    lease[1],
                    "--lease-seconds",
                    LEASE_SECONDS,
                    "--runtime-image",
                    RUNTIME_IMAGE,
                    *extra,
                ],
                # One Secret name InferenceServices here may use for object-store credentials;
                # its own TMPDIR, for what a SIGKILLed operator leaves (the client's CA file)
                env={
                    **self.cluster.env(),
                    "MARFLEET_TENANCY": json.dumps(TENANCY),
                    "TMPDIR": str(self.logs),
                },
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        operator = OperatorProcess(proc, port, log)
        self.started.append(operator)
        wait_for(lambda: operator.get("/healthz")[0] == 200, 30, f"operator health ({log})")
        if leader:
            wait_for(lambda: operator.metric("marfleet_operator_leader") == 1, 30, "leadership")
            self.current = operator
        return operator

    def stop_all(self) -> None:
        for operator in self.started:
            operator.stop()


@pytest.fixture(scope="module")
def operators(
    cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operators]:
    install_crd(cluster)
    ops = Operators(cluster, tmp_path_factory.mktemp("operator"))
    ops.start()
    try:
        yield ops
    finally:
        ops.stop_all()


@pytest.fixture(scope="module")
def api(cluster: LocalCluster) -> k8s.ApiClient:
    return k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig))


@pytest.fixture
def namespace(cluster: LocalCluster, operators: Operators) -> Iterator[str]:
    name = f"op-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false")


# ----- reading and writing through the API -----


def plain(api: k8s.ApiClient, obj: object) -> dict[str, Any]:
    """A client model (or a custom object) as the plain JSON the API server sent."""
    result: dict[str, Any] = api.sanitize_for_serialization(obj)
    return result


def custom(api: k8s.ApiClient) -> k8s.CustomObjectsApi:
    return k8s.CustomObjectsApi(api)


def get_isvc(api: k8s.ApiClient, ns: str, name: str) -> dict[str, Any]:
    return plain(api, custom(api).get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name))


def patch_isvc(cluster: LocalCluster, ns: str, name: str, patch: dict[str, Any]) -> None:
    cluster.kubectl(
        "patch", "inferenceservice", name, "-n", ns, "--type=merge", "-p", json.dumps(patch)
    )


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond["type"] == kind:
            return dict(cond)
    return {}


def wait_ready(api: k8s.ApiClient, ns: str, name: str, timeout: float = 60) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        obj = get_isvc(api, ns, name)
        cond = condition(obj, "Ready")
        observed = (obj.get("status") or {}).get("observedGeneration")
        current = observed == obj["metadata"]["generation"]
        return obj if cond.get("status") == "True" and current else None

    result: dict[str, Any] = wait_for(ready, timeout, f"{ns}/{name} Ready")
    return result


def deployment(api: k8s.ApiClient, ns: str, name: str) -> dict[str, Any] | None:
    try:
        obj = k8s.AppsV1Api(api).read_namespaced_deployment(name, ns)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return plain(api, obj)


def children(api: k8s.ApiClient, ns: str, isvc: str) -> dict[tuple[str, str], str]:
    """(kind, name) -> resourceVersion of every object the operator made for `isvc`."""
    selector = f"{ISVC_LABEL}={isvc}"
    core, apps, autoscaling = k8s.CoreV1Api(api), k8s.AppsV1Api(api), k8s.AutoscalingV2Api(api)
    policy, rbac = k8s.PolicyV1Api(api), k8s.RbacAuthorizationV1Api(api)
    listings = {
        "ServiceAccount": core.list_namespaced_service_account(ns, label_selector=selector),
        "Role": rbac.list_namespaced_role(ns, label_selector=selector),
        "RoleBinding": rbac.list_namespaced_role_binding(ns, label_selector=selector),
        "ConfigMap": core.list_namespaced_config_map(ns, label_selector=selector),
        "Service": core.list_namespaced_service(ns, label_selector=selector),
        "Deployment": apps.list_namespaced_deployment(ns, label_selector=selector),
        "HorizontalPodAutoscaler": autoscaling.list_namespaced_horizontal_pod_autoscaler(
            ns, label_selector=selector
        ),
        "PodDisruptionBudget": policy.list_namespaced_pod_disruption_budget(
            ns, label_selector=selector
        ),
    }
    return {
        (kind, item["metadata"]["name"]): item["metadata"]["resourceVersion"]
        for kind, listing in listings.items()
        for item in plain(api, listing)["items"]
    }


def events(api: k8s.ApiClient, ns: str, name: str) -> list[tuple[str, str, str]]:
    found = k8s.CoreV1Api(api).list_namespaced_event(
        ns, field_selector=f"involvedObject.name={name},involvedObject.kind=InferenceService"
    )
    return [(e["type"], e["reason"], e["message"]) for e in plain(api, found)["items"]]


def apply(cluster: LocalCluster, ns: str, obj: dict[str, Any]) -> None:
    obj = {**obj, "metadata": {**obj["metadata"], "namespace": ns}}
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(obj))


def design_example() -> dict[str, Any]:
    docs = yaml.safe_load_all(EXAMPLE.read_text())
    obj: dict[str, Any] = next(d for d in docs if d["kind"] == "InferenceService")
    return obj


TENANCY = {"secrets": ["*/model-store-credentials"]}


def small(name: str, *variants: str, **spec: Any) -> dict[str, Any]:
    names = variants or ("main",)
    weights = [100 // len(names)] * len(names)
    weights[0] += 100 - sum(weights)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {
            "variants": [
                {"name": v, "weight": w, "model": {"uri": f"https://models.example/{name}-{v}.mar"}}
                for v, w in zip(names, weights, strict=True)
            ],
            "autoscaling": {"engine": "none", "minReplicas": 1},
            **spec,
        },
    }


# ----- tests -----


def test_design_example_becomes_a_placed_ready_fleet(
    cluster: LocalCluster, api: k8s.ApiClient, namespace: str
) -> None:
    apply(cluster, namespace, design_example())
    obj = wait_ready(api, namespace, "resnet50")
    assert set(children(api, namespace, "resnet50")) >= {
        ("ConfigMap", "resnet50-stable"),
        ("ConfigMap", "resnet50-canary"),
        ("Deployment", "resnet50-stable"),
        ("Deployment", "resnet50-canary"),
        ("Service", "resnet50-stable"),
        ("Service", "resnet50-canary"),
        ("Service", "resnet50"),
        ("HorizontalPodAutoscaler", "resnet50-stable"),
        ("HorizontalPodAutoscaler", "resnet50-canary"),
    }
    for variant, uri in (("stable", "resnet50-1.0.mar"), ("canary", "resnet50-2.0.mar")):
        deploy = deployment(api, namespace, f"resnet50-{variant}")
        assert deploy is not None
        pod_spec = deploy["spec"]["template"]["spec"]
        server = pod_spec["containers"][0]
        assert server["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert {"key": "nvidia.com/gpu", "operator": "Exists"} in pod_spec["tolerations"]
        assert pod_spec["initContainers"][0]["args"][:2] == [
            "fetch",
            f"https://models.example/{uri}",
        ]
        assert {"name": "MARFLEET_VARIANT", "value": variant} in server["env"]
        assert [p["containerPort"] for p in server["ports"]] == [8080, 8081, 8082, 7070, 7071]
        hpa = k8s.AutoscalingV2Api(api).read_namespaced_horizontal_pod_autoscaler(
            f"resnet50-{variant}", namespace
        )
        metric = plain(api, hpa)["spec"]["metrics"][0]["pods"]
        assert (metric["metric"]["name"], metric["target"]["averageValue"]) == (
            "marfleet_requests_per_second",
            "500",
        )
    pods = k8s.CoreV1Api(api).list_namespaced_pod(
        namespace, label_selector=f"{ISVC_LABEL}=resnet50,app.kubernetes.io/component=runtime"
    )
    placed = [p["spec"]["nodeName"] for p in plain(api, pods)["items"]]
    assert placed == ["gpu-h100-node", "gpu-h100-node"]
    stable = plain(api, k8s.CoreV1Api(api).read_namespaced_service("resnet50", namespace))
    assert stable["spec"]["selector"]["app.kubernetes.io/component"] == "router"
    router = deployment(api, namespace, "resnet50-router")
    assert router is not None
    args = router["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == [
        "router",
        "--isvc",
        "resnet50",
        "--grpc-port",
        "7070",
        "--grpc-backend-port",
        "7070",
        *("--response-timeout", "245"),
    ]
    account = f"system:serviceaccount:{namespace}:resnet50-router"
    for target, allowed in (("resnet50", "yes"), ("another", "no")):
        answer = cluster.kubectl(
            "auth",
            "can-i",
            "watch",
            f"inferenceservices/{target}",
            "-n",
            namespace,
            "--as",
            account,
            check=False,
        ).stdout.strip()
        assert answer == allowed, (target, answer)
    status = obj["status"]
    assert status["url"] == f"http://resnet50.{namespace}.svc.cluster.local"
    assert status["traffic"] == "stable=90,canary=10"
    assert [
        (v["name"], v["weight"], v["readyReplicas"], v["modelVersion"]) for v in status["variants"]
    ] == [
        ("stable", 90, 1, "1.0"),
        ("canary", 10, 1, "2.0"),
    ]
    assert condition(obj, "ModelsReady")["status"] == "True"
    traffic = condition(obj, "TrafficReady")
    assert traffic["status"] == "True"
    assert traffic["reason"] == "Routed"
    recorded = wait_for(lambda: events(api, namespace, "resnet50"), 10, "events")
    assert (
        "Normal",
        "Ready",
        "Ready is True: 2 variants serving; " + traffic["message"],
    ) in recorded


def test_edits_reach_the_children_and_deletion_collects_them(
    cluster: LocalCluster, api: k8s.ApiClient, namespace: str
) -> None:
    apply(cluster, namespace, small("edit", "a", "b", resources={"requests": {"memory": "1Gi"}}))
    wait_ready(api, namespace, "edit")
    untouched = deployment(api, namespace, "edit-a")
    assert untouched is not None

    patch_isvc(
        cluster,
        namespace,
        "edit",
        {
            "spec": {
                "variants": [
                    {
                        "name": "a",
                        "weight": 40,
                        "model": {"uri": "https://models.example/edit-a.mar"},
                    },
                    {"name": "b", "weight": 60, "model": {"uri": "https://models.example/b-2.mar"}},
                ],
                "resources": {"requests": {"memory": "2Gi"}},
            }
        },
    )
    obj = wait_ready(api, namespace, "edit")
    assert obj["status"]["traffic"] == "a=40,b=60"
    assert [v["weight"] for v in obj["status"]["variants"]] == [40, 60]
    for variant in ("a", "b"):
        deploy = deployment(api, namespace, f"edit-{variant}")
        assert deploy is not None
        server = deploy["spec"]["template"]["spec"]["containers"][0]
        assert server["resources"]["requests"]["memory"] == "2Gi"
    moved = deployment(api, namespace, "edit-b")
    assert moved is not None
    assert moved["spec"]["template"]["spec"]["initContainers"][0]["args"][1] == (
        "https://models.example/b-2.mar"
    )

    patch_isvc(
        cluster,
        namespace,
        "edit",
        {
            "spec": {
                "variants": [{"name": "a", "model": {"uri": "https://models.example/edit-a.mar"}}]
            }
        },
    )
    wait_for(
        lambda: deployment(api, namespace, "edit-b") is None, 15, "variant b's Deployment removed"
    )
    assert not [key for key in children(api, namespace, "edit") if key[1] == "edit-b"]
    wait_ready(api, namespace, "edit")

    custom(api).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "edit")
    wait_for(lambda: not children(api, namespace, "edit"), 30, "garbage collection of the children")


def test_hand_deleted_and_hand_edited_children_come_back(
    cluster: LocalCluster, api: k8s.ApiClient, namespace: str
) -> None:
    apply(cluster, namespace, small("drift"))
    wait_ready(api, namespace, "drift")
    before = deployment(api, namespace, "drift-main")
    assert before is not None

    cluster.kubectl("delete", "deployment", "drift-main", "-n", namespace, "--wait=false")
    started = time.monotonic()

    def recreated() -> bool:
        now = deployment(api, namespace, "drift-main")
        return now is not None and now["metadata"]["uid"] != before["metadata"]["uid"]

    wait_for(recreated, 10, "the deleted Deployment to come back")
    restored_after = time.monotonic() - started

    cluster.kubectl(
        "set",
        "env",
        "deployment/drift-main",
        "-n",
        namespace,
        "-c",
        "server",
        "MARFLEET_VARIANT=tampered",
    )
    started = time.monotonic()

    def repaired() -> bool:
        now = deployment(api, namespace, "drift-main")
        env = now["spec"]["template"]["spec"]["containers"][0]["env"] if now else []
        return {"name": "MARFLEET_VARIANT", "value": "main"} in env

    wait_for(repaired, 10, "the edited Deployment to be repaired")
    repaired_after = time.monotonic() - started
    print(f"drift repaired: deleted {restored_after:.2f}s, edited {repaired_after:.2f}s")


def hpas_reported(api: k8s.ApiClient, ns: str) -> bool:
    """Every HPA has been processed by the HPA controller (it has a ScalingActive condition)."""
    found = k8s.AutoscalingV2Api(api).list_namespaced_horizontal_pod_autoscaler(ns)
    hpas = plain(api, found)["items"]
    return bool(hpas) and all(
        any(c["type"] == "ScalingActive" for c in (h.get("status") or {}).get("conditions") or [])
        for h in hpas
    )


def wait_quiet(operator: OperatorProcess, quiet: float = 3.0, timeout: float = 30) -> None:
    """Wait until the operator has made no write for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    last, since = operator.metric("marfleet_operator_writes_total"), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, "the operator kept writing"
        time.sleep(0.5)
        now = operator.metric("marfleet_operator_writes_total")
        if now != last:
            last, since = now, time.monotonic()


def writes_before_children_are_listed(cluster: LocalCluster, obj: dict[str, Any]) -> float:
    """Reconcile `obj` once in a new in-process controller, configured as the operator process,
    that has seen the InferenceService but none of its children: the moment just after a
    restart, before the children's watches have listed them. Return how many writes it made."""
    env = cluster.env()
    args = ["--kubeconfig", str(cluster.kubeconfig), "--runtime-image", RUNTIME_IMAGE]
    settings = settings_from(parser(env).parse_args(args), env)

    async def reconcile_once() -> Controller:
        async with KubeAPI(str(cluster.kubeconfig)) as api:
            controller = Controller(api, settings.controller, OperatorMetrics())
            key = controller.store.put_isvc(obj)
            assert key is not None
            await controller.reconcile(key)
            return controller

    controller = asyncio.run(reconcile_once())
    return sum(
        sample.value
        for family in controller.metrics.registry.collect()
        for sample in family.samples
        if sample.name == "marfleet_operator_writes_total"
    )


def test_restart_on_a_converged_cluster_writes_nothing(
    cluster: LocalCluster, api: k8s.ApiClient, namespace: str, operators: Operators
) -> None:
    apply(cluster, namespace, design_example())
    apply(cluster, namespace, small("bert", autoscaling={"minReplicas": 2, "maxReplicas": 3}))
    for name in ("resnet50", "bert"):
        wait_ready(api, namespace, name)
    wait_for(lambda: hpas_reported(api, namespace), 45, "the HPA controller to report")
    assert operators.current is not None
    wait_quiet(operators.current)

    def versions() -> dict[tuple[str, str], str]:
        found = {
            ("InferenceService", n): get_isvc(api, namespace, n)["metadata"]["resourceVersion"]
            for n in ("resnet50", "bert")
        }
        for name in ("resnet50", "bert"):
            found.update(children(api, namespace, name))
        return found

    before = versions()
    assert ("PodDisruptionBudget", "bert-main") in before
    for name in ("resnet50", "bert"):
        assert writes_before_children_are_listed(cluster, get_isvc(api, namespace, name)) == 0
    operators.current.stop()
    restarted = operators.start()

    def reconciled_both() -> bool:
        return restarted.metric("marfleet_operator_reconciles_total", result="success") >= 2

    wait_for(reconciled_both, 30, "the new operator to reconcile")
    wait_quiet(restarted)
    writes = [line for line in restarted.get("/metrics")[1].splitlines() if "writes_total{" in line]
    assert restarted.metric("marfleet_operator_writes_total") == 0, writes
    assert versions() == before


def test_unsupported_uri_is_a_condition_not_a_crash(
    cluster: LocalCluster, api: k8s.ApiClient, namespace: str, operators: Operators
) -> None:
    obj = small("s3", "good", "bad")
    obj["spec"]["variants"][1]["model"]["uri"] = "s3://Bucket/model.mar"
    apply(cluster, namespace, obj)

    def reported() -> dict[str, Any]:
        current = get_isvc(api, namespace, "s3")
        return condition(current, "ModelsReady")

    models = wait_for(
        lambda: reported().get("reason") == "UnsupportedModelURI" and reported(), 30, "condition"
    )
    assert models["status"] == "False"
    assert "'Bucket' is not a bucket name" in models["message"]
    wait_for(lambda: deployment(api, namespace, "s3-good"), 10, "the good variant's Deployment")
    assert deployment(api, namespace, "s3-bad") is None
    warnings = wait_for(
        lambda: [e for e in events(api, namespace, "s3") if e[1] == "UnsupportedModelURI"],
        10,
        "event",
    )
    assert warnings[0][0] == "Warning"
    assert operators.current is not None
    assert operators.current.proc.poll() is None
    assert operators.current.metric("marfleet_operator_reconciles_total", result="error") == 0

    obj["spec"]["variants"][1]["model"]["uri"] = "https://models.example/fixed.mar"
    apply(cluster, namespace, obj)
    wait_ready(api, namespace, "s3")
    assert deployment(api, namespace, "s3-bad") is not None


def test_https_to_s3_waits_for_the_storage_secret_then_rolls_the_variant(
    cluster: LocalCluster, api: k8s.ApiClient, namespace: str, operators: Operators
) -> None:
    apply(cluster, namespace, small("store"))
    wait_for(lambda: deployment(api, namespace, "store-main"), 30, "the https Deployment")
    before = deployment(api, namespace, "store-main")
    assert before is not None
    s3 = {
        "uri": "s3://models/store/main.mar",
        "storage": {"secretName": "model-store-credentials", "endpoint": "http://s3.local:7070"},
    }
    patch_isvc(cluster, namespace, "store", {"spec": {"variants": [{"name": "main", "model": s3}]}})

    def missing() -> dict[str, Any]:
        return condition(get_isvc(api, namespace, "store"), "ModelsReady")

    cond = wait_for(lambda: missing().get("reason") == "StorageSecretMissing" and missing(), 30, "")
    assert f"Secret {namespace}/model-store-credentials" in cond["message"]
    # The event is recorded just after the status write that carries the condition.
    wait_for(
        lambda: [e for e in events(api, namespace, "store") if e[1] == "StorageSecretMissing"],
        10,
        "the StorageSecretMissing event",
    )
    unchanged = deployment(api, namespace, "store-main")
    assert unchanged is not None
    assert unchanged["metadata"]["generation"] == before["metadata"]["generation"]

    secret = "not-a-real-key-but-a-secret-all-the-same"
    cluster.kubectl(
        "create", "secret", "generic", "model-store-credentials", "-n", namespace,
        "--from-literal=AWS_ACCESS_KEY_ID=id", f"--from-literal=AWS_SECRET_ACCESS_KEY={secret}",
    )  # fmt: skip

    def rolled() -> dict[str, Any] | None:
        now = deployment(api, namespace, "store-main")
        changed = now and now["metadata"]["generation"] > before["metadata"]["generation"]
        return now if changed else None

    after = wait_for(rolled, 40, "the variant to roll to the s3 URI")
    fetch = after["spec"]["template"]["spec"]["initContainers"][0]
    assert fetch["args"][:2] == ["fetch", "s3://models/store/main.mar"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in fetch["env"]}
    assert refs["AWS_SECRET_ACCESS_KEY"] == "model-store-credentials"
    assert secret not in json.dumps(after)
    wait_for(
        lambda: missing().get("reason") != "StorageSecretMissing", 30, "the condition to clear"
    )


ADDON_CRDS = """
# Stand-ins for the KEDA and Prometheus Operator CRDs (the real ones cannot be downloaded
# here): same group, version, kind and scope, any content accepted. What is tested is the
# operator noticing the CRDs and applying its objects; KEDA and Prometheus are not running.
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: scaledobjects.keda.sh}
spec:
  group: keda.sh
  scope: Namespaced
  names:
    {kind: ScaledObject, plural: scaledobjects, singular: scaledobject, listKind: ScaledObjectList}
  versions:
  - name: v1alpha1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: servicemonitors.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names:
    kind: ServiceMonitor
    plural: servicemonitors
    singular: servicemonitor
    listKind: ServiceMonitorList
  versions:
  - name: v1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
"""


def test_keda_and_service_monitor_follow_their_crds(
    cluster: LocalCluster, api: k8s.ApiClient, namespace: str
) -> None:
    apply(
        cluster,
        namespace,
        small("scaled", autoscaling={"engine": "keda", "minReplicas": 2, "maxReplicas": 4}),
    )
    obj = wait_ready(api, namespace, "scaled")
    autoscaling = condition(obj, "AutoscalingReady")
    assert (autoscaling["status"], autoscaling["reason"]) == ("False", "KedaNotInstalled")
    fixed = deployment(api, namespace, "scaled-main")
    assert fixed is not None and fixed["spec"]["replicas"] == 2

    cluster.kubectl("apply", "-f", "-", input=ADDON_CRDS)
    try:
        objects = k8s.CustomObjectsApi(api)

        def scaled_object() -> dict[str, Any] | None:
            try:
                found = plain(
                    api,
                    objects.get_namespaced_custom_object(
                        "keda.sh", "v1alpha1", namespace, "scaledobjects", "scaled-main"
                    ),
                )
            except ApiException:
                return None
            return found

        scaled = wait_for(scaled_object, 30, "a ScaledObject once KEDA's CRD exists")
        assert scaled["spec"]["minReplicaCount"] == 2
        assert scaled["spec"]["triggers"][0]["type"] == "prometheus"
        monitor = wait_for(
            lambda: plain(
                api,
                objects.list_namespaced_custom_object(
                    "monitoring.coreos.com", "v1", namespace, "servicemonitors"
                ),
            )["items"],
            30,
            "a ServiceMonitor",
        )
        assert monitor[0]["metadata"]["name"] == "scaled"
        obj = wait_for(
            lambda: (
                condition(get_isvc(api, namespace, "scaled"), "AutoscalingReady").get("status")
                == "True"
                and get_isvc(api, namespace, "scaled")
            ),
            30,
            "AutoscalingReady",
        )
        assert condition(obj, "AutoscalingReady")["reason"] == "ScaledObject"
    finally:
        cluster.kubectl("delete", "-f", "-", "--wait=true", input=ADDON_CRDS)


def test_only_the_lease_holder_acts_and_a_standby_takes_over(
    cluster: LocalCluster, api: k8s.ApiClient, namespace: str, operators: Operators
) -> None:
    leader = operators.current
    assert leader is not None
    standby = operators.start(leader=False)
    time.sleep(2)
    assert standby.get("/healthz")[0] == 200
    assert standby.metric("marfleet_operator_leader") == 0

    apply(cluster, namespace, small("ha-one"))
    wait_ready(api, namespace, "ha-one")
    assert standby.metric("marfleet_operator_reconciles_total") == 0
    assert standby.metric("marfleet_operator_writes_total") == 0

    leader.stop(signal.SIGKILL)
    crashed = time.monotonic()
    wait_for(lambda: standby.metric("marfleet_operator_leader") == 1, 30, "the standby to lead")
    took_over = time.monotonic() - crashed
    assert took_over < float(LEASE_SECONDS) + 5
    operators.current = standby
    apply(cluster, namespace, small("ha-two"))
    wait_ready(api, namespace, "ha-two")
    print(f"standby took over {took_over:.1f}s after the leader was killed")


def test_metrics_and_health(operators: Operators) -> None:
    operator = operators.current
    assert operator is not None
    assert operator.get("/healthz") == (200, "ok\n")
    assert operator.get("/readyz")[0] == 200
    _, text = operator.get("/metrics")
    for name in (
        "marfleet_operator_reconciles_total",
        "marfleet_operator_reconcile_duration_seconds_bucket",
        "marfleet_operator_managed_inferenceservices",
        "marfleet_operator_leader",
    ):
        assert name in text
    assert operator.metric("marfleet_operator_managed_inferenceservices") >= 1


def test_operator_logs_are_json(operators: Operators) -> None:
    operator = operators.current
    assert operator is not None
    lines = [line for line in operator.log.read_text().splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in parsed)


def test_two_candidates_never_both_win_the_lease(cluster: LocalCluster) -> None:
    """Candidates racing for a free lease: the API server lets exactly one of them create it,
    and after that only the holder renews."""

    async def race() -> None:
        async with (
            KubeAPI(str(cluster.kubeconfig)) as one,
            KubeAPI(str(cluster.kubeconfig)) as other,
        ):
            for index in range(10):
                name = f"race-{uuid.uuid4().hex[:6]}"
                electors = [
                    LeaderElector(client, LeaseSettings("default", name, identity=f"candidate-{n}"))
                    for n, client in enumerate((one, other))
                ]
                won = await asyncio.gather(*(e.try_acquire_or_renew() for e in electors))
                assert won.count(True) == 1, (index, won)
                winner, loser = electors[won.index(True)], electors[won.index(False)]
                assert await winner.try_acquire_or_renew()
                assert not await loser.try_acquire_or_renew()
                cluster.kubectl("delete", "lease", name, "-n", "default")

    asyncio.run(race())
