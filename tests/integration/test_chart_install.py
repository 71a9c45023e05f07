"""`helm install` into the local control plane, then the real operator run with nothing but the
chart's ServiceAccount token: it reconciles the example InferenceService
(examples/resnet50-canary.yaml) to Ready (the RBAC is enough), the same token is refused
everything outside the operator's job (the RBAC is narrow), and `helm uninstall` leaves only the
CRD behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.localcluster import LocalCluster
from e2e.localcluster.toolchain import KUBERNETES
from e2e.prometheus import chart
from e2e.support import free_port, terminate, wait_for

pytestmark = pytest.mark.slow

RELEASE = "marfleet"
NAMESPACE = "marfleet-system"
ISVC_NAMESPACE = "chart-rbac"
SERVICE_ACCOUNT = "marfleet"
CRD = "inferenceservices.serving.marfleet.io"
EXAMPLE = chart.REPO_ROOT / "examples" / "resnet50-canary.yaml"
LEFTOVER_KINDS = (
    "deployments,services,configmaps,serviceaccounts,secrets,roles,rolebindings,"
    "clusterroles,clusterrolebindings,poddisruptionbudgets,leases"
)


def helm(cluster: LocalCluster, *args: str) -> str:
    return chart.helm(*args, "--kubeconfig", str(cluster.kubeconfig), env=cluster.env())


@pytest.fixture(scope="module")
def installed(cluster: LocalCluster) -> Iterator[LocalCluster]:
    helm(
        cluster,
        "install",
        RELEASE,
        str(chart.CHART_DIR),
        "--namespace",
        NAMESPACE,
        "--create-namespace",
        "--wait",
        "--timeout",
        "120s",
    )
    try:
        yield cluster
    finally:
        helm(cluster, "uninstall", RELEASE, "--namespace", NAMESPACE, "--ignore-not-found")
        cluster.kubectl("delete", "namespace", ISVC_NAMESPACE, "--ignore-not-found", "--wait=false")


@pytest.fixture(scope="module")
def token_kubeconfig(installed: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kubeconfig holding only a token of the chart's ServiceAccount."""
    path = tmp_path_factory.mktemp("sa") / "kubeconfig"
    return installed.service_account_kubeconfig(NAMESPACE, SERVICE_ACCOUNT, path, duration="1h")


def as_operator(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """kubectl with only the ServiceAccount's token."""
    kubectl = str(KUBERNETES.path("kubectl"))
    command = [kubectl, "--kubeconfig", str(kubeconfig), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def chart_operator_settings(
    release: str = RELEASE, namespace: str = NAMESPACE, values: dict[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """The operator container's args and literal env, as the chart renders them."""
    (deployment,) = chart.objects_of_kind(
        chart.template(release=release, namespace=namespace, set_values=values), "Deployment"
    )
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    return container["args"], env


def start_chart_operator(
    kubeconfig: Path,
    log: Path,
    *extra_args: str,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    values: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """The real operator process, configured as the chart configures it, with the token in
    `kubeconfig`; its output goes to `log`."""
    args, env = chart_operator_settings(release, namespace, values)
    environment = {
        **os.environ,
        **env,
        "MARFLEET_OPERATOR_NAMESPACE": namespace,
        "MARFLEET_OPERATOR_POD_NAME": "operator-under-test",
        "MARFLEET_METRICS_PORT": str(free_port()),
        "KUBECONFIG": str(kubeconfig),
    }
    marfleet = Path(sys.executable).with_name("marfleet")
    command = [str(marfleet), *args, "--kubeconfig", str(kubeconfig), "--host", "127.0.0.1"]
    with log.open("wb") as output:
        return subprocess.Popen(
            [*command, *extra_args],
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.fixture
def operator(installed: LocalCluster, token_kubeconfig: Path, tmp_path: Path) -> Iterator[Path]:
    """The real operator process, configured as the chart configures it, with the SA token."""
    log = tmp_path / "operator.log"
    process = start_chart_operator(token_kubeconfig, log)
    try:
        yield log
    finally:
        terminate(process)


def test_install_creates_the_operator_with_two_replicas_and_the_crd(
    installed: LocalCluster,
) -> None:
    deployment = json.loads(
        installed.kubectl(
            "get", "deployment", f"{RELEASE}-operator", "-n", NAMESPACE, "-o", "json"
        ).stdout
    )
    assert deployment["spec"]["replicas"] == 2
    assert deployment["status"].get("readyReplicas") == 2
    crd = json.loads(installed.kubectl("get", "crd", CRD, "-o", "json").stdout)
    established = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert established["Established"] == "True"
    source = yaml.safe_load((chart.REPO_ROOT / "crds" / "inferenceservice.yaml").read_text())
    assert crd["spec"]["versions"][0]["name"] == source["spec"]["versions"][0]["name"]


def test_notes_tell_the_user_what_to_do_next(installed: LocalCluster) -> None:
    notes = helm(installed, "get", "notes", RELEASE, "--namespace", NAMESPACE)
    assert f"kubectl -n {NAMESPACE} rollout status deployment/{RELEASE}-operator" in notes
    assert "kind: InferenceService" in notes


def test_the_operator_reconciles_the_design_example_with_the_charts_rights(
    installed: LocalCluster, operator: Path
) -> None:
    documents = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    isvc = next(d for d in documents if d["kind"] == "InferenceService")
    isvc["metadata"]["namespace"] = ISVC_NAMESPACE
    installed.kubectl("create", "namespace", ISVC_NAMESPACE)
    installed.kubectl("apply", "-f", "-", input=json.dumps(isvc))

    def ready() -> bool:
        got = installed.kubectl(
            "get",
            "inferenceservice",
            isvc["metadata"]["name"],
            "-n",
            ISVC_NAMESPACE,
            "-o",
            "json",
            check=False,
        )
        status: dict[str, Any] = json.loads(got.stdout or "{}").get("status") or {}
        return any(
            c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", [])
        )

    wait_for(ready, 120, f"InferenceService Ready; operator log:\n{operator.read_text()[-3000:]}")
    log = operator.read_text()
    assert "forbidden" not in log.lower(), log[-3000:]
    deployments = installed.kubectl("get", "deployments", "-n", ISVC_NAMESPACE, "-o", "name")
    assert set(deployments.stdout.split()) >= {
        "deployment.apps/resnet50-stable",
        "deployment.apps/resnet50-canary",
    }


@pytest.mark.parametrize(
    "action",
    [
        ("get", "secrets", "--all-namespaces"),
        ("get", "secrets", "-n", NAMESPACE),
        ("create", "secret", "generic", "stolen", "-n", "default", "--from-literal=a=b"),
        ("run", "miner", "--image=example.invalid/miner", "-n", "default"),
        ("delete", "namespace", "default"),
        ("delete", "crd", CRD),
        (
            "create",
            "clusterrolebinding",
            "escalate",
            "--clusterrole=cluster-admin",
            f"--serviceaccount={NAMESPACE}:{SERVICE_ACCOUNT}",
        ),
        ("delete", "inferenceservice", "resnet50", "-n", "default"),
        ("annotate", "lease", "kube-scheduler", "-n", "kube-system", "x=y"),
        ("delete", "lease", f"{RELEASE}-operator", "-n", NAMESPACE),
        ("cordon", "cpu-node-1"),
    ],
    ids=lambda a: " ".join(a[:3]),
)
def test_the_charts_rights_refuse_what_is_not_the_operators_job(
    installed: LocalCluster, token_kubeconfig: Path, action: tuple[str, ...]
) -> None:
    result = as_operator(token_kubeconfig, *action)
    assert result.returncode != 0
    assert "forbidden" in result.stderr.lower(), result.stderr


def test_the_charts_rights_allow_the_operators_reads(
    installed: LocalCluster, token_kubeconfig: Path
) -> None:
    for action in (
        ("get", "inferenceservices", "--all-namespaces"),
        ("get", "deployments", "--all-namespaces"),
        ("get", "crd", CRD),
        ("get", "lease", f"{RELEASE}-operator", "-n", NAMESPACE),
    ):
        result = as_operator(token_kubeconfig, *action)
        assert result.returncode == 0, f"{action}: {result.stderr}"


def test_uninstall_leaves_only_the_crd(installed: LocalCluster) -> None:
    installed.kubectl(
        "delete", "namespace", ISVC_NAMESPACE, "--ignore-not-found", "--wait=true", timeout=120
    )
    helm(installed, "uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "60s")
    left = installed.kubectl(
        "get",
        LEFTOVER_KINDS,
        "--all-namespaces",
        "-o",
        "name",
        "-l",
        f"app.kubernetes.io/instance={RELEASE}",
    )
    assert left.stdout.strip() == ""
    releases = installed.kubectl(
        "get", "secrets", "-n", NAMESPACE, "-l", "owner=helm", "-o", "name"
    )
    assert releases.stdout.strip() == ""
    assert installed.kubectl("get", "crd", CRD, check=False).returncode == 0
