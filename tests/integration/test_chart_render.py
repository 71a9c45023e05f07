"""`helm lint --strict` and `helm template` with the chart's own values files, bad values refused
by the schema with a message that says what to fix, and the monitoring objects checked against
the metric contract in docs/metrics.md."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from marfleet.operator import labels

from e2e.prometheus import chart, contract, promql

VALUES_FILES = sorted((chart.CHART_DIR / "ci").glob("*-values.yaml"))
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda p: p.stem)
def test_lint_strict_passes(values: Path) -> None:
    out = chart.helm("lint", "--strict", str(chart.CHART_DIR), "-f", str(values))
    assert "1 chart(s) linted, 0 chart(s) failed" in out


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda p: p.stem)
def test_template_renders_namespaced_objects_with_two_operator_replicas_by_default(
    values: Path,
) -> None:
    objects = chart.template([values], namespace="ml-serving")
    for obj in objects:
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"].get("namespace"), f"{obj['kind']} {obj['metadata']['name']}"
    (deployment,) = chart.objects_of_kind(objects, "Deployment")
    set_replicas = yaml.safe_load(values.read_text()).get("operator", {}).get("replicas")
    assert deployment["spec"]["replicas"] == (set_replicas or 2)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][0] == "operator"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


BAD_VALUES: list[tuple[str, dict[str, Any], list[str]]] = [
    ("no replicas", {"operator": {"replicas": 0}}, ["/operator/replicas", "minimum"]),
    ("typo in a key", {"operator": {"replica": 2}}, ["/operator", "'replica' not allowed"]),
    (
        "objective as a percentage",
        {"monitoring": {"prometheusRule": {"slo": {"availability": 99.9}}}},
        ["/monitoring/prometheusRule/slo/availability", "got 99.9, want 1"],
    ),
    (
        "namespace that is not a DNS label",
        {"operator": {"watchNamespaces": ["ML_Serving"]}},
        ["/operator/watchNamespaces/0", "does not match pattern"],
    ),
    (
        "bad log level",
        {"operator": {"logLevel": "verbose"}},
        ["/operator/logLevel", "must be one of 'debug', 'info'"],
    ),
    (
        "interval without a unit",
        {"monitoring": {"interval": 30}},
        ["/monitoring/interval", "got number, want string"],
    ),
    (
        "rollout metrics source that is no URL",
        {"rollout": {"prometheusUrl": "prometheus:9090"}},
        ["/rollout/prometheusUrl", "does not match pattern"],
    ),
    (
        "image with whitespace",
        {"runtime": {"image": {"repository": "my registry/runtime"}}},
        ["/runtime/image/repository", "does not match pattern"],
    ),
]


@pytest.mark.parametrize(
    ("values", "fragments"), [c[1:] for c in BAD_VALUES], ids=[c[0] for c in BAD_VALUES]
)
def test_bad_values_are_refused_with_the_path_and_the_rule(
    tmp_path: Path, values: dict[str, Any], fragments: list[str]
) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(chart.HelmError) as refused:
        chart.template([path])
    message = str(refused.value)
    assert "values don't meet the specifications of the schema" in message
    for fragment in fragments:
        assert fragment in message, message


def test_an_existing_service_account_must_be_named(tmp_path: Path) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump({"serviceAccount": {"create": False}}))
    with pytest.raises(chart.HelmError, match=r"serviceAccount\.name must name an existing"):
        chart.template([path])


@pytest.fixture(scope="module")
def monitoring_objects() -> list[dict[str, Any]]:
    return chart.template(set_values=chart.MONITORING_ON)


def test_monitoring_objects_are_each_optional(monitoring_objects: list[dict[str, Any]]) -> None:
    kinds = {o["kind"] for o in monitoring_objects}
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule"} <= kinds
    default_kinds = {o["kind"] for o in chart.template()}
    assert not default_kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    assert len(chart.dashboards(monitoring_objects)) == 3
    assert chart.dashboards(chart.template()) == {}


def test_every_name_in_rules_and_dashboards_is_promised_or_recorded(
    monitoring_objects: list[dict[str, Any]],
) -> None:
    groups = chart.rule_groups(monitoring_objects)
    recorded = {r["record"] for g in groups for r in g["rules"] if "record" in r}
    promised = contract.documented_samples()
    boards = chart.dashboards(monitoring_objects)
    queries = (
        chart.rule_queries(groups)
        + chart.dashboard_queries(boards)
        + chart.dashboard_variable_queries(boards)
    )
    unknown = sorted(
        f"{q.source}: {name}"
        for q in queries
        for name in promql.metric_names(q.expr.replace("label_values(", "("))
        if name not in promised | recorded
    )
    assert not unknown, f"names neither in docs/metrics.md nor recorded by the chart: {unknown}"


def test_adapter_serves_the_documented_hpa_metrics(
    monitoring_objects: list[dict[str, Any]],
) -> None:
    served = {}
    for rule in chart.adapter_rules(monitoring_objects):
        series = promql.metric_names(rule["seriesQuery"]).pop()
        assert re.fullmatch(rule["name"]["matches"], series)
        query = rule["metricsQuery"].replace("{<<.LabelMatchers>>}", "")
        query = query.replace("<<.Series>>", series).replace("<<.GroupBy>>", "namespace, pod")
        served[rule["name"]["as"]] = query
    assert served == contract.documented_adapter_queries()


def test_dashboards_carry_the_grafana_sidecar_label(
    monitoring_objects: list[dict[str, Any]],
) -> None:
    maps = [
        o
        for o in chart.objects_of_kind(monitoring_objects, "ConfigMap")
        if o["metadata"]["name"].split("-dashboard-")[-1] in {"executive", "oncall", "debug"}
    ]
    assert len(maps) == 3
    for config_map in maps:
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_pod_monitors_select_the_pods_the_operator_labels(
    monitoring_objects: list[dict[str, Any]],
) -> None:
    monitors = {
        m["spec"]["selector"]["matchLabels"][labels.COMPONENT]: m
        for m in chart.objects_of_kind(monitoring_objects, "PodMonitor")
    }
    assert set(monitors) == {labels.RUNTIME, labels.ROUTER}
    for component, monitor in monitors.items():
        assert monitor["spec"]["selector"]["matchLabels"] == {
            labels.MANAGED_BY: labels.OPERATOR,
            labels.COMPONENT: component,
        }
    (relabel,) = monitors[labels.RUNTIME]["spec"]["podMetricsEndpoints"][0]["relabelings"]
    pod_label = re.sub(r"[^a-zA-Z0-9_]", "_", labels.ISVC)
    assert relabel == {
        "sourceLabels": [f"__meta_kubernetes_pod_label_{pod_label}"],
        "targetLabel": "isvc",
    }


def operator_env(objects: list[dict[str, Any]]) -> dict[str, str]:
    (deployment,) = chart.objects_of_kind(objects, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container["env"]}


def test_routers_are_scraped_one_way_per_install(
    monitoring_objects: list[dict[str, Any]],
) -> None:
    # PodMonitors on: the operator creates no ServiceMonitor of its own.
    assert operator_env(monitoring_objects)["MARFLEET_SERVICE_MONITORS"] == "false"
    # Off (the default): the operator's per-InferenceService ServiceMonitor is the one path.
    assert operator_env(chart.template())["MARFLEET_SERVICE_MONITORS"] == "true"


def test_the_rollout_metrics_source_is_a_value_with_a_documented_default() -> None:
    default = operator_env(chart.template())
    assert default["MARFLEET_ROLLOUT_PROMETHEUS_URL"] == ""  # read the routers directly
    assert (
        default["MARFLEET_ROUTER_METRICS_URL"]
        == "http://{isvc}-router.{namespace}.svc:8082/metrics"
    )
    prometheus = "http://prometheus-operated.monitoring.svc:9090"
    chosen = operator_env(chart.template(set_values={"rollout.prometheusUrl": prometheus}))
    assert chosen["MARFLEET_ROLLOUT_PROMETHEUS_URL"] == prometheus


def test_watching_some_namespaces_grants_workload_rights_only_there() -> None:
    values = chart.CHART_DIR / "ci" / "namespaced-values.yaml"
    watched = yaml.safe_load(values.read_text())["operator"]["watchNamespaces"]
    objects = chart.template([values])
    (cluster_role,) = chart.objects_of_kind(objects, "ClusterRole")
    cluster_resources = {r for rule in cluster_role["rules"] for r in rule["resources"]}
    assert cluster_resources == {"customresourcedefinitions"}
    workload_roles = {
        role["metadata"]["namespace"]
        for role in chart.objects_of_kind(objects, "Role")
        if any("deployments" in rule["resources"] for rule in role["rules"])
    }
    assert workload_roles == set(watched)
    assert not chart.objects_of_kind(objects, "ServiceAccount")


def test_no_rule_grants_wildcards_secrets_or_pods() -> None:
    objects = chart.template(set_values=chart.MONITORING_ON)
    rules = [
        rule
        for role in chart.objects_of_kind(objects, "ClusterRole")
        + chart.objects_of_kind(objects, "Role")
        for rule in role["rules"]
    ]
    for rule in rules:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
        assert not {"secrets", "pods", "pods/exec"} & set(rule["resources"]), rule


VAP = "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy"
KEDA = "keda.sh/v1alpha1/ScaledObject"


def workload_resources(objects: list[dict[str, Any]]) -> set[str]:
    return {
        resource
        for role in chart.objects_of_kind(objects, "ClusterRole")
        for rule in role["rules"]
        for resource in rule["resources"]
    }


def test_addon_rights_follow_the_apis_the_cluster_serves() -> None:
    assert not {"scaledobjects", "servicemonitors"} & workload_resources(chart.template())
    with_keda = workload_resources(chart.template(api_versions=[KEDA]))
    assert "scaledobjects" in with_keda and "servicemonitors" not in with_keda
    always = workload_resources(chart.template(set_values={"rbac.addonRules": "always"}))
    assert {"scaledobjects", "servicemonitors"} <= always


def test_the_guard_fences_in_the_operators_own_token_where_the_api_exists() -> None:
    assert not chart.objects_of_kind(chart.template(), "ValidatingAdmissionPolicy")
    objects = chart.template(api_versions=[VAP], namespace="ml-serving")
    (policy,) = chart.objects_of_kind(objects, "ValidatingAdmissionPolicy")
    (binding,) = chart.objects_of_kind(objects, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"] == {
        "policyName": policy["metadata"]["name"],
        "validationActions": ["Deny"],
    }
    (condition,) = policy["spec"]["matchConditions"]
    assert condition["expression"] == (
        'request.userInfo.username == "system:serviceaccount:ml-serving:marfleet"'
    )
    namespaces = policy["spec"]["validations"][0]["expression"]
    assert namespaces == (
        '!(request.namespace in ["kube-system","kube-public","kube-node-lease","ml-serving"])'
    )
    off = chart.template(api_versions=[VAP], set_values={"rbac.guard.enabled": "false"})
    assert not chart.objects_of_kind(off, "ValidatingAdmissionPolicy")


def test_the_guard_allows_the_model_caches_host_path_and_no_other() -> None:
    def volumes_rule(values: dict[str, str]) -> str:
        objects = chart.template(api_versions=[VAP], set_values=values)
        (policy,) = chart.objects_of_kind(objects, "ValidatingAdmissionPolicy")
        return str(policy["spec"]["validations"][-1]["expression"])

    assert "hostPath" not in volumes_rule({})
    assert 'v.hostPath.path.startsWith("/var/cache/marfleet/")' in volumes_rule(
        {"modelCache.hostPath": "/var/cache/marfleet/"}
    )
