"""The CRD in a real apiserver: invalid InferenceServices are refused at `kubectl apply` with
messages that say what to fix, and `kubectl explain` documents every field."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
import yaml
from marfleet.operator.spec import GROUP, KIND, VERSION

from e2e.localcluster import LocalCluster
from e2e.support import wait_for

pytestmark = pytest.mark.slow

CRD = Path(__file__).resolve().parents[2] / "crds" / "inferenceservice.yaml"
CRD_NAME = "inferenceservices.serving.marfleet.io"


def install_crd(cluster: LocalCluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    # `kubectl wait` gives up at once while the CRD has no conditions yet (a loaded apiserver)
    wait_for(
        lambda: (
            cluster.kubectl(
                "wait",
                "--for=condition=Established",
                f"crd/{CRD_NAME}",
                "--timeout=10s",
                check=False,
            ).returncode
            == 0
        ),
        60,
        f"{CRD_NAME} Established",
    )
    wait_garbage_collector_knows_crd(cluster)


def wait_garbage_collector_knows_crd(cluster: LocalCluster, timeout: float = 90) -> None:
    """Wait until the controller manager's garbage collector collects the dependents of a gone
    InferenceService.

    It learns of new resource types at its own 30-second discovery sync; an InferenceService
    deleted before then keeps its children until a retry whose backoff has grown past a
    test's patience. Each probe is a ConfigMap owned by an InferenceService that does not
    exist, made fresh each round so its retries start from no backoff."""
    deadline = time.monotonic() + timeout
    while True:
        probe = f"gc-probe-{uuid.uuid4().hex[:8]}"
        owner = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "name": probe,
            "uid": str(uuid.uuid4()),
        }
        cm = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": probe, "namespace": "default", "ownerReferences": [owner]},
        }
        cluster.kubectl("create", "-f", "-", input=json.dumps(cm))
        collected = cluster.kubectl(
            "wait",
            "--for=delete",
            f"configmap/{probe}",
            "-n",
            "default",
            "--timeout=3s",
            check=False,
        )
        if collected.returncode == 0:
            return
        cluster.kubectl("delete", "configmap", probe, "-n", "default", "--ignore-not-found")
        assert time.monotonic() < deadline, (
            f"the garbage collector did not learn of {CRD_NAME} within {timeout:.0f}s; "
            "see kube-controller-manager.log in the cluster's directory"
        )


@pytest.fixture(scope="module")
def crd_cluster(cluster: LocalCluster) -> LocalCluster:
    install_crd(cluster)
    return cluster


def manifest(spec: str, name: str = "bad") -> str:
    return (
        "apiVersion: serving.marfleet.io/v1alpha1\nkind: InferenceService\n"
        f"metadata: {{name: {name}, namespace: default}}\nspec:\n{spec}"
    )


ONE = "  variants:\n  - {name: a, model: {uri: 'https://h/a.mar'}}\n"

INVALID = {
    "weights not summing to 100": (
        manifest(
            "  variants:\n"
            "  - {name: a, weight: 50, model: {uri: 'https://h/a.mar'}}\n"
            "  - {name: b, weight: 40, model: {uri: 'https://h/b.mar'}}\n"
        ),
        ["spec.variants", "variant weights must sum to 100"],
    ),
    "duplicate variant names": (
        manifest(
            "  variants:\n"
            "  - {name: a, weight: 50, model: {uri: 'https://h/a.mar'}}\n"
            "  - {name: a, weight: 50, model: {uri: 'https://h/b.mar'}}\n"
        ),
        ["variant names must be unique"],
    ),
    "minReplicas above maxReplicas": (
        manifest(ONE + "  autoscaling: {minReplicas: 5, maxReplicas: 2}\n"),
        ["spec.autoscaling.minReplicas", "must not be greater than maxReplicas"],
    ),
    "negative GPU count": (
        manifest(ONE + "  resources: {accelerator: {count: -1}}\n"),
        ["spec.resources.accelerator.count", "should be greater than or equal to 0"],
    ),
    "unknown metric": (
        manifest(ONE + "  autoscaling: {metric: qps}\n"),
        ['Unsupported value: "qps"', '"requestsPerSecond", "inflightRequests", "cpu"'],
    ),
    "unknown engine": (
        manifest(ONE + "  autoscaling: {engine: magic}\n"),
        ['Unsupported value: "magic"', '"hpa", "keda", "none"'],
    ),
    "more than 8 variants": (
        manifest(
            "  variants:\n"
            + "".join(
                f"  - {{name: v{i}, weight: {10 if i < 8 else 20}, model: {{uri: 'https://h/m.mar'}}}}\n"
                for i in range(9)
            )
        ),
        ["spec.variants", "must have at most 8 items"],
    ),
    "HPA scaling to zero": (
        manifest(ONE + "  autoscaling: {minReplicas: 0}\n"),
        ["engine hpa cannot scale to zero"],
    ),
    "URI without a scheme": (
        manifest("  variants:\n  - {name: a, model: {uri: models/a.mar}}\n"),
        ["spec.variants[0].model.uri", "whose scheme is one of"],
    ),
    "URI with an unknown scheme": (
        manifest("  variants:\n  - {name: a, model: {uri: 'ftp://h/a.mar'}}\n"),
        ["spec.variants[0].model.uri", "http, https, pvc, file, s3, gs"],
    ),
    "storage options on an https URI": (
        manifest(
            "  variants:\n  - {name: a, model: {uri: 'https://h/a.mar', "
            "storage: {secretName: creds}}}\n"
        ),
        ["model.storage applies to s3:// and gs:// URIs only"],
    ),
    "anonymous with a Secret": (
        manifest(
            "  variants:\n  - {name: a, model: {uri: 's3://b1/a.mar', "
            "storage: {secretName: creds, anonymous: true}}}\n"
        ),
        ["anonymous and secretName exclude each other"],
    ),
    "reserved variant name": (
        manifest("  variants:\n  - {name: router, model: {uri: 'https://h/a.mar'}}\n"),
        ["variant names 'router' and '*-router' are reserved"],
    ),
    "variant taking another InferenceService's router names": (
        manifest("  variants:\n  - {name: y-router, model: {uri: 'https://h/a.mar'}}\n"),
        ["spec.variants[0].name", "variant names 'router' and '*-router' are reserved"],
    ),
    "an env value over 4096 characters": (
        manifest(ONE + "  runtime: {env: [{name: A, value: '" + "x" * 4097 + "'}]}\n"),
        ["spec.runtime.env[0].value", "may not be more than 4096 bytes"],
    ),
    "env adding up to over 16384 characters": (
        manifest(
            "  variants:\n  - {name: a, model: {uri: 'https://h/a.mar'}, runtime: {env: ["
            + ", ".join(f"{{name: A{i}, value: '{'x' * 4000}'}}" for i in range(5))
            + "]}}\n"
        ),
        ["spec.variants[0].runtime.env", "must add up to at most 16384 characters"],
    ),
    "env from two sources": (
        manifest(
            ONE + "  runtime: {env: [{name: A, valueFrom: {fieldRef: {fieldPath: metadata.name},"
            " secretKeyRef: {name: s, key: k}}}]}\n"
        ),
        ["valueFrom needs exactly one of"],
    ),
    "a toleration of every taint": (
        manifest(ONE + "  scheduling: {tolerations: [{operator: Exists}]}\n"),
        ["spec.scheduling.tolerations[0].key", "Required value"],
    ),
    "anti-affinity reaching other namespaces": (
        manifest(
            ONE + "  scheduling: {affinity: {podAntiAffinity: "
            "{requiredDuringSchedulingIgnoredDuringExecution: [{topologyKey: "
            "kubernetes.io/hostname, labelSelector: {}, namespaceSelector: {}}]}}}\n"
        ),
        ["may not set namespaceSelector or namespaces"],
    ),
    "preferred affinity naming namespaces": (
        manifest(
            ONE + "  scheduling: {affinity: {podAffinity: "
            "{preferredDuringSchedulingIgnoredDuringExecution: [{weight: 1, podAffinityTerm: "
            "{topologyKey: kubernetes.io/hostname, namespaces: [kube-system]}}]}}}\n"
        ),
        ["may not set namespaceSelector or namespaces"],
    ),
    "cpu metric without a cpu request": (
        manifest(ONE + "  autoscaling: {metric: cpu}\n"),
        ["needs resources.requests.cpu"],
    ),
    "GPU products without GPUs": (
        manifest(ONE + "  resources: {accelerator: {products: [NVIDIA-H100-80GB-HBM3]}}\n"),
        ["accelerator.products only places GPU replicas"],
    ),
    "names too long for a Service": (
        manifest(
            "  variants:\n  - {name: " + "v" * 40 + ", model: {uri: 'https://h/a.mar'}}\n",
            name="n" * 30,
        ),
        ["must be at most 63 characters"],
    ),
    "TLS handing the router the private key": (
        manifest(ONE + "  tls: {secretName: web-tls, caKey: tls.key}\n"),
        ["tls.caKey may not be tls.key"],
    ),
    "a TLS Secret in another namespace": (
        manifest(ONE + "  tls: {secretName: other/web-tls}\n"),
        ["spec.tls.secretName", "should match"],
    ),
    "rollout steps not ending at 100": (
        manifest(ONE + "  rollout: {steps: [10, 50]}\n"),
        ["rollout.steps must end at 100"],
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_manifest_is_refused(crd_cluster: LocalCluster, case: str) -> None:
    text, fragments = INVALID[case]
    result = crd_cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=text, check=False)
    assert result.returncode != 0, f"{case}: accepted"
    assert 'The InferenceService "' in result.stderr and "is invalid" in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_design_example_is_accepted_and_defaulted(crd_cluster: LocalCluster) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "resnet50-canary.yaml"
    isvc = next(
        d for d in yaml.safe_load_all(example.read_text()) if d["kind"] == "InferenceService"
    )
    isvc["metadata"]["namespace"] = "default"
    result = crd_cluster.kubectl(
        "apply", "--dry-run=server", "-f", "-", "-o", "yaml", input=yaml.safe_dump(isvc)
    )
    assert "maxBatchSize: 8" in result.stdout
    minimal = manifest(ONE, name="ok")
    defaulted = crd_cluster.kubectl(
        "apply", "--dry-run=server", "-f", "-", "-o", "json", input=minimal
    )
    assert '"engine": "hpa"' in defaulted.stdout and '"queueSize": 1000' in defaulted.stdout


def test_kubectl_explain_documents_fields(crd_cluster: LocalCluster) -> None:
    text = crd_cluster.kubectl("explain", "inferenceservice.spec.autoscaling").stdout
    assert "How each variant's replica count follows its own traffic" in text
    for field in ("minReplicas", "maxReplicas", "metric", "targetPerReplica", "engine"):
        assert field in text
    short = crd_cluster.kubectl("get", "mfisvc", "-A").returncode
    category = crd_cluster.kubectl("get", "marfleet", "-A").returncode
    assert (short, category) == (0, 0)


@pytest.mark.parametrize(
    "path", sorted(CRD.parents[1].glob("examples/*.yaml")), ids=lambda p: p.name
)
def test_examples_are_accepted(crd_cluster: LocalCluster, path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc["kind"] != "InferenceService":
            continue
        doc["metadata"]["namespace"] = "default"
        crd_cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(doc))
