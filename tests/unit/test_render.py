"""Renderers, field by field, without a cluster: what each InferenceService becomes."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from marfleet.operator import labels, render, spec
from marfleet.operator.compare import intent_hash

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "resnet50-canary.yaml"
CTX = render.RenderContext(default_image="registry.example/marfleet:1")
H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-80GB"


def design_example() -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d["kind"] == spec.KIND]
    obj: dict[str, Any] = docs[0]
    obj["metadata"].update(uid="uid-1", generation=3)
    return obj


def minimal(**spec_fields: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "bert", "namespace": "nlp", "uid": "uid-2", "generation": 1},
        "spec": {
            "variants": [{"name": "main", "model": {"uri": "https://h/bert.mar"}}],
            **spec_fields,
        },
    }


def rendered(obj: dict[str, Any], ctx: render.RenderContext = CTX) -> dict[tuple[str, str], Any]:
    desired = render.render(spec.parse(obj), ctx)
    return {(o["kind"], o["metadata"]["name"]): o for o in desired.objects}


def pod(objects: dict[tuple[str, str], Any], name: str) -> dict[str, Any]:
    result: dict[str, Any] = objects[("Deployment", name)]["spec"]["template"]["spec"]
    return result


def container(objects: dict[tuple[str, str], Any], name: str) -> dict[str, Any]:
    result: dict[str, Any] = pod(objects, name)["containers"][0]
    return result


# ----- what exists -----


def test_design_example_objects() -> None:
    assert sorted(rendered(design_example())) == sorted(
        [
            ("ConfigMap", "resnet50-stable"),
            ("Deployment", "resnet50-stable"),
            ("Service", "resnet50-stable"),
            ("HorizontalPodAutoscaler", "resnet50-stable"),
            ("ConfigMap", "resnet50-canary"),
            ("Deployment", "resnet50-canary"),
            ("Service", "resnet50-canary"),
            ("HorizontalPodAutoscaler", "resnet50-canary"),
            ("Service", "resnet50"),
            ("ServiceAccount", "resnet50-router"),
            ("Role", "resnet50-router"),
            ("RoleBinding", "resnet50-router"),
            ("Deployment", "resnet50-router"),
            ("PodDisruptionBudget", "resnet50-router"),
            ("Service", "resnet50-router"),
        ]
    )


def test_every_object_is_owned_labelled_and_namespaced() -> None:
    for (kind, name), obj in rendered(design_example()).items():
        meta = obj["metadata"]
        assert meta["namespace"] == "vision", (kind, name)
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "serving.marfleet.io/v1alpha1",
                "kind": "InferenceService",
                "name": "resnet50",
                "uid": "uid-1",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert meta["labels"][labels.MANAGED_BY] == "marfleet-operator"
        assert meta["labels"][labels.ISVC] == "resnet50"
        assert meta["annotations"][labels.INTENT_HASH] == intent_hash(obj)


def test_pdb_only_above_one_replica() -> None:
    assert not [k for k in rendered(minimal()) if k[0] == "PodDisruptionBudget"]
    objects = rendered(minimal(autoscaling={"minReplicas": 3, "maxReplicas": 5}))
    pdb = objects[("PodDisruptionBudget", "bert-main")]
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"] == {
        "maxUnavailable": 1,
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
        "selector": {"matchLabels": labels.variant_selector(spec.parse(minimal()), "main")},
    }


def test_engine_none_has_fixed_replicas_and_no_autoscaler() -> None:
    objects = rendered(minimal(autoscaling={"engine": "none", "minReplicas": 2}))
    assert objects[("Deployment", "bert-main")]["spec"]["replicas"] == 2
    assert not [k for k in objects if k[0] in ("HorizontalPodAutoscaler", "ScaledObject")]


def test_hpa_leaves_replicas_to_the_autoscaler() -> None:
    assert "replicas" not in rendered(minimal())[("Deployment", "bert-main")]["spec"]


def test_keda_without_keda_runs_fixed_replicas() -> None:
    objects = rendered(minimal(autoscaling={"engine": "keda", "minReplicas": 2}))
    assert objects[("Deployment", "bert-main")]["spec"]["replicas"] == 2
    assert ("ScaledObject", "bert-main") not in objects


def test_no_service_monitor_when_the_charts_pod_monitors_scrape_the_pods() -> None:
    ctx = render.RenderContext(
        default_image="i", service_monitor_installed=True, service_monitors=False
    )
    assert ("ServiceMonitor", "bert") not in rendered(minimal(), ctx)


def test_the_operators_service_monitor_reaches_each_router_pod_through_one_service() -> None:
    two = minimal(
        variants=[
            {"name": "main", "weight": 90, "model": {"uri": "https://h/a.mar"}},
            {"name": "canary", "weight": 10, "model": {"uri": "https://h/b.mar"}},
        ]
    )
    ctx = render.RenderContext(default_image="i", service_monitor_installed=True)
    objects = rendered(two, ctx)
    selector = objects[("ServiceMonitor", "bert")]["spec"]["selector"]["matchLabels"]
    scraped = [
        o
        for (kind, _), o in objects.items()
        if kind == "Service" and selector.items() <= o["metadata"]["labels"].items()
    ]
    routers = [o for o in scraped if o["spec"]["selector"].get(labels.COMPONENT) == labels.ROUTER]
    assert [o["metadata"]["name"] for o in routers] == ["bert"]  # not also bert-router
    assert len(scraped) == 3  # and each variant's Service once


def test_a_variant_deployment_names_the_model_revision_it_runs() -> None:
    deployment = rendered(minimal())[("Deployment", "bert-main")]
    revision = deployment["metadata"]["annotations"][labels.MODEL_REVISION]
    variant = minimal()["spec"]["variants"][0]
    assert revision == labels.model_revision(
        "main", variant["model"]["uri"], variant["model"].get("version", "")
    )
    # On the Deployment, not its pods: stamping it rolls no pod.
    assert labels.MODEL_REVISION not in deployment["spec"]["template"]["metadata"]["annotations"]


def test_service_monitor_only_when_installed() -> None:
    assert ("ServiceMonitor", "bert") not in rendered(minimal())
    ctx = render.RenderContext(
        default_image="i", service_monitor_installed=True, service_monitor_labels={"release": "kps"}
    )
    monitor = rendered(minimal(), ctx)[("ServiceMonitor", "bert")]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["spec"] == {
        "selector": {"matchLabels": {labels.ISVC: "bert", labels.SCRAPE: "true"}},
        "endpoints": [
            {
                "port": "metrics",
                "path": "/metrics",
                "interval": "15s",
                "relabelings": [
                    {
                        "sourceLabels": [
                            "__meta_kubernetes_pod_label_serving_marfleet_io_inferenceservice"
                        ],
                        "targetLabel": "isvc",
                    }
                ],
            }
        ],
    }


def test_unsupported_uri_blocks_only_that_variant() -> None:
    obj = design_example()
    obj["spec"]["variants"][1]["model"]["uri"] = "s3://Bucket/resnet50-2.0.mar"
    desired = render.render(spec.parse(obj), CTX)
    names = {o["metadata"]["name"] for o in desired.objects}
    assert "resnet50-canary" not in names
    assert "resnet50-stable" in names
    assert "expected s3://<bucket>/<key>" in desired.blocked["canary"]


# ----- the variant Deployment -----


def test_deployment_identity_and_strategy() -> None:
    deploy = rendered(design_example())[("Deployment", "resnet50-stable")]
    selector = {
        labels.ISVC: "resnet50",
        labels.COMPONENT: "runtime",
        labels.VARIANT: "stable",
    }
    assert deploy["apiVersion"] == "apps/v1"
    assert deploy["spec"]["selector"] == {"matchLabels": selector}
    template_labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= template_labels.items()
    assert deploy["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0},
    }


def test_fetch_init_container() -> None:
    obj = design_example()
    obj["spec"]["variants"][0]["model"]["sha256"] = "ab" * 32
    init = pod(rendered(obj), "resnet50-stable")["initContainers"]
    assert [c["name"] for c in init] == ["fetch-model"]
    assert init[0]["command"] == ["marfleet"]
    assert init[0]["args"] == [
        "fetch",
        "https://models.example/resnet50-1.0.mar",
        "/mnt/models",
        "--sha256",
        "ab" * 32,
    ]
    assert init[0]["image"] == "registry.example/marfleet:1"
    assert {"name": "model-store", "mountPath": "/mnt/models"} in init[0]["volumeMounts"]


def test_pvc_model_is_mounted_read_only_for_the_fetch() -> None:
    obj = minimal()
    obj["spec"]["variants"][0]["model"]["uri"] = "pvc://models-claim/bert/bert.mar"
    objects = rendered(obj)
    spec_ = pod(objects, "bert-main")
    assert {
        "name": "model-pvc",
        "persistentVolumeClaim": {"claimName": "models-claim", "readOnly": True},
    } in spec_["volumes"]
    init = spec_["initContainers"][0]
    assert init["args"][-2:] == ["--pvc-root", "/mnt/pvc"]
    assert {
        "name": "model-pvc",
        "mountPath": "/mnt/pvc/models-claim",
        "readOnly": True,
    } in init["volumeMounts"]


def test_server_container() -> None:
    server = container(rendered(design_example()), "resnet50-canary")
    assert server["name"] == "server"
    assert server["workingDir"] == "/tmp", "the server writes key_file.json where it runs"
    assert server["command"] == ["marfleet"]
    assert server["args"] == [
        "serve",
        "--foreground",
        "--ts-config",
        "/etc/marfleet/config.properties",
        "--model-store",
        "/mnt/models",
        "--models",
        "resnet50=resnet50-2.0.mar",
    ]
    assert server["ports"] == [
        {"name": "inference", "containerPort": 8080, "protocol": "TCP"},
        {"name": "management", "containerPort": 8081, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 8082, "protocol": "TCP"},
        {"name": "grpc", "containerPort": 7070, "protocol": "TCP"},
        {"name": "grpc-management", "containerPort": 7071, "protocol": "TCP"},
    ]
    assert server["readinessProbe"]["httpGet"] == {"path": "/ping", "port": "inference"}
    assert server["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "inference"}
    assert server["lifecycle"] == {"preStop": {"sleep": {"seconds": render.DRAIN_SECONDS}}}
    assert pod(rendered(design_example()), "resnet50-canary")["terminationGracePeriodSeconds"] == (
        render.DRAIN_SECONDS + 120 + 5
    )


def test_env_names_the_variant_and_user_env_wins() -> None:
    obj = design_example()
    obj["spec"]["runtime"]["env"] = [{"name": "LOG", "value": "1"}, {"name": "HOME", "value": "/h"}]
    obj["spec"]["variants"][1]["runtime"] = {"env": [{"name": "LOG", "value": "2"}]}
    env = {e["name"]: e.get("value") for e in container(rendered(obj), "resnet50-canary")["env"]}
    assert env == {"MARFLEET_VARIANT": "canary", "HOME": "/h", "LOG": "2"}
    stable = container(rendered(obj), "resnet50-stable")["env"]
    assert {"name": "MARFLEET_VARIANT", "value": "stable"} in stable


def test_security_context() -> None:
    objects = rendered(design_example())
    assert pod(objects, "resnet50-stable")["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    for c in [
        container(objects, "resnet50-stable"),
        pod(objects, "resnet50-stable")["initContainers"][0],
    ]:
        assert c["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        }
    mounts = {
        m["mountPath"]: m.get("readOnly", False)
        for m in container(objects, "resnet50-stable")["volumeMounts"]
    }
    assert mounts == {"/mnt/models": True, "/tmp": False, "/dev/shm": False, "/etc/marfleet": True}


def test_scrape_annotations_and_config_hash() -> None:
    annotations = rendered(design_example())[("Deployment", "resnet50-stable")]["spec"]["template"][
        "metadata"
    ]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8082"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert annotations["serving.marfleet.io/model-version"] == "1.0"
    changed = design_example()
    changed["spec"]["runtime"]["batching"]["maxBatchSize"] = 16
    again = rendered(changed)[("Deployment", "resnet50-stable")]["spec"]["template"]["metadata"]
    assert again["annotations"][labels.CONFIG_HASH] != annotations[labels.CONFIG_HASH]


def test_config_properties_carry_the_runtime_settings() -> None:
    obj = design_example()
    obj["spec"]["variants"][1]["runtime"] = {"batching": {"maxBatchSize": 32}, "queueSize": 50}
    objects = rendered(obj)
    text = objects[("ConfigMap", "resnet50-canary")]["data"]["config.properties"]
    props = dict(
        line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert props == {
        "inference_address": "http://0.0.0.0:8080",
        "management_address": "http://0.0.0.0:8081",
        "metrics_address": "http://0.0.0.0:8082",
        "grpc_inference_port": "7070",
        "grpc_management_port": "7071",
        "number_of_gpu": "1",
        "workers_per_device": "1",
        "batch_size": "32",
        "max_batch_delay": "5",
        "job_queue_size": "50",
        "default_response_timeout": "120",
        "enable_envvars_config": "true",
        "disable_inference_token_authorization": "true",
        "require_startup_models": "true",
    }
    stable = objects[("ConfigMap", "resnet50-stable")]["data"]["config.properties"]
    assert "batch_size=8\n" in stable and "job_queue_size=1000\n" in stable


# ----- GPU placement -----


def test_gpu_limit_toleration_and_affinity() -> None:
    objects = rendered(design_example())
    spec_ = pod(objects, "resnet50-stable")
    assert container(objects, "resnet50-stable")["resources"] == {
        "requests": {"cpu": "2", "memory": "4Gi"},
        "limits": {"memory": "8Gi", "nvidia.com/gpu": "1"},
    }
    assert spec_["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    node = spec_["affinity"]["nodeAffinity"]
    assert node["requiredDuringSchedulingIgnoredDuringExecution"] == {
        "nodeSelectorTerms": [
            {
                "matchExpressions": [
                    {"key": "nvidia.com/gpu.product", "operator": "In", "values": [H100, A100]}
                ]
            }
        ]
    }
    assert [
        (p["weight"], p["preference"]["matchExpressions"][0]["values"])
        for p in node["preferredDuringSchedulingIgnoredDuringExecution"]
    ] == [(100, [H100]), (50, [A100])]


def test_cpu_variant_has_no_gpu_placement() -> None:
    spec_ = pod(rendered(minimal()), "bert-main")
    assert "tolerations" not in spec_ and "affinity" not in spec_
    assert "resources" not in container(rendered(minimal()), "bert-main")
    props = rendered(minimal())[("ConfigMap", "bert-main")]["data"]["config.properties"]
    assert "number_of_gpu=0\n" in props


def test_products_are_added_to_every_user_node_selector_term() -> None:
    obj = design_example()
    user_term = {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
    obj["spec"]["scheduling"] = {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [user_term]}
            }
        },
        "tolerations": [{"key": "dedicated", "operator": "Exists"}],
        "nodeSelector": {"pool": "gpu"},
        "priorityClassName": "inference",
    }
    spec_ = pod(rendered(obj), "resnet50-stable")
    terms = spec_["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert terms == [
        {
            "matchExpressions": [
                {"key": "zone", "operator": "In", "values": ["a"]},
                {"key": "nvidia.com/gpu.product", "operator": "In", "values": [H100, A100]},
            ]
        }
    ]
    assert spec_["tolerations"] == [
        {"key": "dedicated", "operator": "Exists"},
        {"key": "nvidia.com/gpu", "operator": "Exists"},
    ]
    assert spec_["nodeSelector"] == {"pool": "gpu"}
    assert spec_["priorityClassName"] == "inference"
    assert obj["spec"]["scheduling"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"] == [user_term], "the spec itself is not modified"


def test_gpu_image_for_gpu_variants() -> None:
    ctx = render.RenderContext(default_image="cpu-img", gpu_image="cuda-img")
    assert container(rendered(design_example(), ctx), "resnet50-stable")["image"] == "cuda-img"
    assert container(rendered(minimal(), ctx), "bert-main")["image"] == "cpu-img"
    obj = minimal(runtime={"image": "mine"})
    assert container(rendered(obj, ctx), "bert-main")["image"] == "mine"


# ----- Services and traffic -----


def test_variant_service() -> None:
    svc = rendered(design_example())[("Service", "resnet50-canary")]
    assert svc["spec"]["selector"] == {
        labels.ISVC: "resnet50",
        labels.COMPONENT: "runtime",
        labels.VARIANT: "canary",
    }
    assert svc["spec"]["ports"] == [
        {"name": "inference", "port": 8080, "targetPort": "inference", "protocol": "TCP"},
        {"name": "management", "port": 8081, "targetPort": "management", "protocol": "TCP"},
        {"name": "metrics", "port": 8082, "targetPort": "metrics", "protocol": "TCP"},
        {"name": "grpc", "port": 7070, "targetPort": "grpc", "protocol": "TCP"},
        {
            "name": "grpc-management",
            "port": 7071,
            "targetPort": "grpc-management",
            "protocol": "TCP",
        },
    ]
    assert svc["metadata"]["labels"][labels.SCRAPE] == "true"
    # headless: its name resolves to each ready pod (the router spreads requests over them),
    # so every port must be the container's own port number
    assert svc["spec"]["clusterIP"] == "None"
    deployment = rendered(design_example())[("Deployment", "resnet50-canary")]
    (server, *_) = deployment["spec"]["template"]["spec"]["containers"]
    container_ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert all(container_ports[p["targetPort"]] == p["port"] for p in svc["spec"]["ports"])
    stable = rendered(design_example())[("Service", "resnet50")]
    assert "clusterIP" not in stable["spec"] and stable["spec"]["type"] == "ClusterIP"


def test_router_when_available() -> None:
    ctx = render.RenderContext(default_image="img", router_image="router-img")
    objects = rendered(design_example(), ctx)
    svc = objects[("Service", "resnet50")]
    assert svc["spec"]["selector"] == {labels.ISVC: "resnet50", labels.COMPONENT: "router"}
    assert [p["name"] for p in svc["spec"]["ports"]] == ["http", "inference", "grpc", "metrics"]
    router = objects[("Deployment", "resnet50-router")]
    (container,) = router["spec"]["template"]["spec"]["containers"]
    assert {"name": "grpc", "containerPort": 7070, "protocol": "TCP"} in container["ports"]
    assert container["args"][3:7] == ["--grpc-port", "7070", "--grpc-backend-port", "7070"]
    assert router["spec"]["replicas"] == 2
    assert router["spec"]["template"]["spec"]["serviceAccountName"] == "resnet50-router"
    assert ("ServiceAccount", "resnet50-router") in objects
    role = objects[("Role", "resnet50-router")]
    assert role["rules"] == [
        {
            "apiGroups": ["serving.marfleet.io"],
            "resources": ["inferenceservices"],
            "resourceNames": ["resnet50"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    binding = objects[("RoleBinding", "resnet50-router")]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "resnet50-router",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "resnet50-router", "namespace": "vision"}
    ]
    assert router["spec"]["selector"] == {
        "matchLabels": {labels.ISVC: "resnet50", labels.COMPONENT: "router"}
    }
    box = router["spec"]["template"]["spec"]["containers"][0]
    assert box["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert box["securityContext"]["readOnlyRootFilesystem"] is True
    assert (box["image"], box["command"], box["args"]) == (
        "router-img",
        ["marfleet"],
        [
            *("router", "--isvc", "resnet50", "--grpc-port", "7070", "--grpc-backend-port", "7070"),
            *("--response-timeout", "245"),  # a 120 s queue wait and a 120 s batch, and 5 s
        ],
    )
    env = {e["name"]: e for e in box["env"]}
    assert env["MARFLEET_NAMESPACE"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.namespace"}
    }
    assert json.loads(env["MARFLEET_ROUTER_BACKENDS"]["value"]) == [
        {
            "variant": "stable",
            "url": "http://resnet50-stable.vision.svc.cluster.local:8080",
        },
        {
            "variant": "canary",
            "url": "http://resnet50-canary.vision.svc.cluster.local:8080",
        },
    ]


def test_single_variant_never_gets_a_router() -> None:
    ctx = render.RenderContext(default_image="img")
    objects = rendered(minimal(), ctx)
    assert ("Deployment", "bert-router") not in objects
    assert objects[("Service", "bert")]["spec"]["selector"][labels.VARIANT] == "main"


# ----- autoscaling -----


@pytest.mark.parametrize(
    ("metric", "target", "expected"),
    [
        (
            "requestsPerSecond",
            500,
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": "marfleet_requests_per_second"},
                    "target": {"type": "AverageValue", "averageValue": "500"},
                },
            },
        ),
        (
            "inflightRequests",
            None,
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": "marfleet_inflight_requests"},
                    "target": {"type": "AverageValue", "averageValue": "16"},
                },
            },
        ),
        (
            "cpu",
            None,
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": 70},
                },
            },
        ),
    ],
)
def test_hpa_metric(metric: str, target: int | None, expected: dict[str, Any]) -> None:
    scaling: dict[str, Any] = {"metric": metric, "minReplicas": 2, "maxReplicas": 7}
    if target is not None:
        scaling["targetPerReplica"] = target
    hpa = rendered(minimal(autoscaling=scaling, resources={"requests": {"cpu": "1"}}))[
        ("HorizontalPodAutoscaler", "bert-main")
    ]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "bert-main",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 7)
    assert hpa["spec"]["metrics"] == [expected]
    behavior = hpa["spec"]["behavior"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 300


def test_keda_scaled_object() -> None:
    ctx = render.RenderContext(
        default_image="img",
        keda_installed=True,
        prometheus_url="http://prom:9090",
        keda_authentication_ref="prom-auth",
    )
    obj = minimal(
        autoscaling={"engine": "keda", "minReplicas": 0, "maxReplicas": 4, "targetPerReplica": 50}
    )
    objects = rendered(obj, ctx)
    scaled = objects[("ScaledObject", "bert-main")]
    assert "replicas" not in objects[("Deployment", "bert-main")]["spec"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"] == {"name": "bert-main"}
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (0, 4)
    assert scaled["spec"]["triggers"] == [
        {
            "type": "prometheus",
            "metadata": {
                "serverAddress": "http://prom:9090",
                "query": 'sum(rate(marfleet_requests_total{namespace="nlp",'
                'pod=~"bert-main-[a-z0-9]+-[a-z0-9]+"}[1m]))',
                "threshold": "50",
            },
            "authenticationRef": {"name": "prom-auth"},
        }
    ]
    behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleUp"] == render.SCALE_UP
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 300


def test_scale_down_window_follows_the_spec() -> None:
    obj = minimal(autoscaling={"scaleDownStabilizationSeconds": 30})
    hpa = rendered(obj)[("HorizontalPodAutoscaler", "bert-main")]
    down = hpa["spec"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] == 30
    assert down["policies"] == render.SCALE_DOWN_POLICIES


def test_keda_cpu_trigger() -> None:
    ctx = render.RenderContext(default_image="img", keda_installed=True)
    obj = minimal(
        autoscaling={"engine": "keda", "metric": "cpu"}, resources={"requests": {"cpu": "1"}}
    )
    trigger = rendered(obj, ctx)[("ScaledObject", "bert-main")]["spec"]["triggers"][0]
    assert trigger == {"type": "cpu", "metricType": "Utilization", "metadata": {"value": "70"}}


# ----- determinism -----


def test_rendering_is_deterministic_and_hash_follows_the_spec() -> None:
    first = rendered(design_example())
    assert first == rendered(design_example())
    changed = copy.deepcopy(design_example())
    changed["spec"]["variants"][0]["model"]["uri"] = "https://models.example/resnet50-1.1.mar"
    second = rendered(changed)
    key = ("Deployment", "resnet50-stable")
    assert (
        first[key]["metadata"]["annotations"][labels.INTENT_HASH]
        != second[key]["metadata"]["annotations"][labels.INTENT_HASH]
    )
    other = ("Deployment", "resnet50-canary")
    assert first[other] == second[other]


def test_url() -> None:
    isvc = spec.parse(design_example())
    assert render.url(isvc, CTX) == "http://resnet50.vision.svc.cluster.local"


@pytest.mark.parametrize("path", sorted(EXAMPLE.parent.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_renders(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d["kind"] == spec.KIND]
    assert docs
    for obj in docs:
        desired = render.render(spec.parse(obj), CTX)
        assert desired.blocked == {}
        assert (
            "Deployment",
            f"{obj['metadata']['name']}-{obj['spec']['variants'][0]['name']}",
        ) in {(o["kind"], o["metadata"]["name"]) for o in desired.objects}


def test_the_stable_service_waits_for_a_router_pod_before_switching_to_it() -> None:
    obj = minimal(
        variants=[
            {"name": "main", "weight": 90, "model": {"uri": "https://h/bert.mar"}},
            {"name": "next", "weight": 10, "model": {"uri": "https://h/bert2.mar"}},
        ]
    )
    ctx = render.RenderContext(default_image="img")
    starting = render.render(spec.parse(obj), ctx, router_ready=False)
    service = next(
        o for o in starting.objects if (o["kind"], o["metadata"]["name"]) == ("Service", "bert")
    )
    assert service["spec"]["selector"][labels.VARIANT] == "main"
    assert starting.traffic.reason == "RouterStarting"
    assert any(o["metadata"]["name"] == "bert-router" for o in starting.objects)
    routed = render.render(spec.parse(obj), ctx, router_ready=True)
    service = next(
        o for o in routed.objects if (o["kind"], o["metadata"]["name"]) == ("Service", "bert")
    )
    assert service["spec"]["selector"][labels.COMPONENT] == labels.ROUTER


# ----- TLS (spec.tls) -----


def test_tls_serves_https_and_grpc_tls_from_the_secret_in_the_servers_and_the_router() -> None:
    obj = design_example()
    obj["spec"]["tls"] = {"secretName": "resnet50-tls", "caKey": "tls.crt"}
    objects = rendered(obj)
    text = objects[("ConfigMap", "resnet50-stable")]["data"]["config.properties"]
    props = dict(
        line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert props["inference_address"] == "https://0.0.0.0:8080"
    assert props["management_address"] == "https://0.0.0.0:8081"
    assert props["metrics_address"] == "http://0.0.0.0:8082"  # scrapers stay plain
    assert (props["certificate_file"], props["private_key_file"], props["enable_grpc_ssl"]) == (
        "/etc/marfleet/tls/tls.crt",
        "/etc/marfleet/tls/tls.key",
        "true",
    )
    spec_ = pod(objects, "resnet50-stable")
    assert {
        "name": "tls",
        "secret": {
            "secretName": "resnet50-tls",
            "items": [
                {"key": "tls.crt", "path": "tls.crt"},
                {"key": "tls.key", "path": "tls.key"},
            ],
            "defaultMode": 0o440,
        },
    } in spec_["volumes"]
    server = spec_["containers"][0]
    assert {"name": "tls", "mountPath": "/etc/marfleet/tls", "readOnly": True} in server[
        "volumeMounts"
    ]
    assert "tls" not in [m["name"] for m in spec_["initContainers"][0]["volumeMounts"]]
    assert server["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert server["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    # the router serves the stable Service's clients with the same certificate (so the
    # endpoint speaks HTTPS whatever it fronts) and reaches the variants over TLS
    router = pod(objects, "resnet50-router")
    box = router["containers"][0]
    assert box["args"][-6:] == [
        *("--certificate-file", "/etc/marfleet/tls/tls.crt"),
        *("--private-key-file", "/etc/marfleet/tls/tls.key"),
        *("--upstream-ca", "/etc/marfleet/upstream-ca/ca.crt"),
    ]
    assert [v for v in router["volumes"] if v["name"] == "tls"] == [
        v for v in spec_["volumes"] if v["name"] == "tls"
    ]
    assert {"name": "tls", "mountPath": "/etc/marfleet/tls", "readOnly": True} in (
        box["volumeMounts"]
    )
    backends = json.loads({e["name"]: e for e in box["env"]}["MARFLEET_ROUTER_BACKENDS"]["value"])
    assert {b["url"] for b in backends} == {
        "https://resnet50-stable.vision.svc.cluster.local:8080",
        "https://resnet50-canary.vision.svc.cluster.local:8080",
    }
    assert {
        "name": "upstream-ca",
        "secret": {
            "secretName": "resnet50-tls",
            "items": [{"key": "tls.crt", "path": "ca.crt"}],
            "defaultMode": 0o440,
        },
    } in router["volumes"]
    assert {"name": "upstream-ca", "mountPath": "/etc/marfleet/upstream-ca", "readOnly": True} in (
        box["volumeMounts"]
    )
    # turning TLS on rolls the servers: the config hash of their pods changes
    plain = rendered(design_example())[("Deployment", "resnet50-stable")]
    secured = objects[("Deployment", "resnet50-stable")]
    hashes = [
        d["spec"]["template"]["metadata"]["annotations"][labels.CONFIG_HASH]
        for d in (plain, secured)
    ]
    assert hashes[0] != hashes[1]


def test_tls_with_a_separate_ca_secret_and_without_tls_nothing_changes() -> None:
    obj = design_example()
    obj["spec"]["tls"] = {"secretName": "server-tls", "caSecretName": "cluster-ca"}
    router = pod(rendered(obj), "resnet50-router")
    (volume,) = [v for v in router["volumes"] if v["name"] == "upstream-ca"]
    assert volume["secret"]["secretName"] == "cluster-ca"
    assert volume["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    plain = rendered(design_example())
    plain_router = pod(plain, "resnet50-router")
    assert not {"--upstream-ca", "--certificate-file"} & set(plain_router["containers"][0]["args"])
    assert "tls" not in [v["name"] for v in plain_router["volumes"]]
    server = pod(plain, "resnet50-stable")["containers"][0]
    assert "scheme" not in server["readinessProbe"]["httpGet"]
    text = plain[("ConfigMap", "resnet50-stable")]["data"]["config.properties"]
    assert "certificate_file" not in text and "https://" not in text
