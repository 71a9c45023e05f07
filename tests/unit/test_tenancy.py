"""The tenancy policy: what an InferenceService may reference beyond itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from marfleet.operator.tenancy import TenancyPolicy, refusals

REPO = Path(__file__).resolve().parents[2]
OWN = ("ghcr.io/marfleet/marfleet-runtime:0.1.0", "ghcr.io/marfleet/marfleet-operator:0.1.0")
DEFAULT = TenancyPolicy.from_json("", own_images=OWN)


def isvc(namespace: str = "team-a", **spec: Any) -> dict[str, Any]:
    variants = spec.pop("variants", [{"name": "main", "model": {"uri": "https://m.example/a.mar"}}])
    return {
        "metadata": {"name": "x", "namespace": namespace},
        "spec": {"variants": variants, **spec},
    }


def secret_env(name: str) -> dict[str, Any]:
    return {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": name, "key": "token"}}}


def found(obj: dict[str, Any], policy: TenancyPolicy = DEFAULT) -> list[tuple[str, str]]:
    return [(r.field, r.rule) for r in refusals(obj, policy)]


def test_defaults_refuse_every_reach_beyond_the_object_naming_field_and_rule() -> None:
    obj = isvc(
        runtime={
            "image": "evil.example/miner:1",
            "env": [
                {"name": "PLAIN", "value": "1"},
                secret_env("admin-token"),
                {"name": "C", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            ],
        },
        variants=[
            {"name": "a", "model": {"uri": "pvc://finance-data/model.mar"}},
            {
                "name": "b",
                "model": {"uri": "https://m.example/b.mar"},
                "runtime": {"env": [secret_env("db")]},
            },
        ],
        scheduling={
            "nodeSelector": {"node-role.kubernetes.io/control-plane": ""},
            "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}],
            "priorityClassName": "system-node-critical",
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "pool", "operator": "In", "values": ["gpu"]}
                                ]
                            }
                        ]
                    }
                }
            },
        },
    )
    assert found(obj) == [
        ("spec.runtime.image", "tenancy.imageRegistries"),
        ("spec.runtime.env[1].valueFrom.secretKeyRef.name", "tenancy.secrets"),
        ("spec.runtime.env[2].valueFrom.configMapKeyRef.name", "tenancy.configMaps"),
        ("spec.variants[0].model.uri", "tenancy.persistentVolumeClaims"),
        ("spec.variants[1].runtime.env[0].valueFrom.secretKeyRef.name", "tenancy.secrets"),
        (
            "spec.scheduling.nodeSelector.node-role.kubernetes.io/control-plane",
            "tenancy.nodeSelectors",
        ),
        ("spec.scheduling.tolerations[0].key", "tenancy.tolerations"),
        (
            "spec.scheduling.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
            ".nodeSelectorTerms[0].matchExpressions[0]",
            "tenancy.nodeSelectors",
        ),
        ("spec.scheduling.priorityClassName", "tenancy.priorityClasses"),
    ]
    messages = [str(r) for r in refusals(obj, DEFAULT)]
    assert "Secret team-a/admin-token is not allowed (rule tenancy.secrets)" in messages[1]
    assert "PersistentVolumeClaim team-a/finance-data is not allowed" in messages[3]


def test_what_the_admin_lists_is_allowed_and_nothing_next_to_it() -> None:
    policy = TenancyPolicy.from_json(
        """{"secrets": ["*/hf-token"], "configMaps": ["team-a/*"],
            "persistentVolumeClaims": ["team-a/model-archives"],
            "tolerations": ["dedicated"], "nodeSelectors": ["pool=inference", "zone=*"],
            "priorityClasses": ["inference-high"],
            "imageRegistries": ["registry.example/ml"]}""",
        own_images=OWN,
    )
    allowed = isvc(
        runtime={
            "image": "registry.example/ml/server:2",
            "env": [
                secret_env("hf-token"),
                {"name": "C", "valueFrom": {"configMapKeyRef": {"name": "any", "key": "k"}}},
            ],
        },
        variants=[{"name": "a", "model": {"uri": "pvc://model-archives/m.mar"}}],
        scheduling={
            "nodeSelector": {"pool": "inference", "zone": "b"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "x"}],
            "priorityClassName": "inference-high",
            "affinity": {
                "nodeAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "weight": 1,
                            "preference": {
                                "matchExpressions": [
                                    {"key": "zone", "operator": "NotIn", "values": ["c"]}
                                ]
                            },
                        }
                    ]
                }
            },
        },
    )
    assert found(allowed, policy) == []
    beside = isvc(
        namespace="team-b",
        runtime={
            "image": "registry.example/mlx/server:2",
            "env": [{"name": "C", "valueFrom": {"configMapKeyRef": {"name": "any", "key": "k"}}}],
        },
        variants=[{"name": "a", "model": {"uri": "pvc://model-archives/m.mar"}}],
        scheduling={
            "nodeSelector": {"pool": "gpu"},
            "affinity": {
                "nodeAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "weight": 1,
                            "preference": {
                                "matchExpressions": [{"key": "pool", "operator": "Exists"}]
                            },
                        }
                    ]
                }
            },
        },
    )
    assert [rule for _, rule in found(beside, policy)] == [
        "tenancy.imageRegistries",
        "tenancy.configMaps",
        "tenancy.persistentVolumeClaims",
        "tenancy.nodeSelectors",
        "tenancy.nodeSelectors",
    ]


@pytest.mark.parametrize(
    ("image", "allowed"),
    [
        ("ghcr.io/marfleet/marfleet-runtime:0.1.0", True),
        ("ghcr.io/marfleet/marfleet-runtime:0.2.0-cuda", True),
        ("ghcr.io/marfleet/marfleet-runtime@sha256:" + "a" * 64, True),
        ("ghcr.io/marfleet/marfleet-runtime-evil:1", False),
        ("ghcr.io/marfleet/other:1", False),
        ("docker.io/library/python:3.11", False),
    ],
)
def test_own_images_are_allowed_by_repository_with_any_tag(image: str, allowed: bool) -> None:
    assert DEFAULT.allows_image(image) is allowed


def test_registry_prefixes_end_at_a_path_boundary() -> None:
    policy = TenancyPolicy.from_json('{"imageRegistries": ["registry.example"]}')
    assert policy.allows_image("registry.example/team/server:1")
    assert not policy.allows_image("registry.example.evil.com/server:1")


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ('{"secret": []}', "unknown tenancy rules ['secret']"),
        ('{"secrets": "a/b"}', "tenancy.secrets must be a list of non-empty strings"),
        ("[]", "a JSON object of lists"),
    ],
)
def test_a_malformed_policy_is_refused_at_start(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint.replace("[", r"\[").replace("]", r"\]")):
        TenancyPolicy.from_json(text)


@pytest.mark.parametrize(
    "path",
    sorted(p for p in (REPO / "examples").rglob("*.yaml") if "pvc" not in p.name),
    ids=lambda p: p.name,
)
def test_examples_need_no_allowance(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == "InferenceService":
            assert found(doc) == []


def test_the_pvc_example_needs_its_claim_allowed() -> None:
    (doc,) = [d for d in yaml.safe_load_all((REPO / "examples/pvc-model-keda.yaml").read_text())]
    assert found(doc) == [("spec.variants[0].model.uri", "tenancy.persistentVolumeClaims")]
    policy = TenancyPolicy.from_json('{"persistentVolumeClaims": ["default/model-archives"]}')
    assert found(doc, policy) == []


def test_a_spec_too_large_to_copy_into_every_variant_is_refused() -> None:
    terms = [{"matchExpressions": [{"key": f"k{i}", "operator": "Exists"}]} for i in range(4000)]
    affinity = {"nodeAffinity": {"unknownField": terms}}
    assert found(isvc(scheduling={"affinity": affinity})) == [("spec", "maxSpecBytes")]


def test_tls_secrets_are_the_admins_to_allow() -> None:
    obj = isvc(tls={"secretName": "web-tls", "caSecretName": "cluster-ca"})
    assert found(obj) == [
        ("spec.tls.secretName", "tenancy.secrets"),
        ("spec.tls.caSecretName", "tenancy.secrets"),
    ]
    policy = TenancyPolicy.from_json('{"secrets": ["team-a/web-tls", "team-a/cluster-ca"]}')
    assert found(obj, policy) == []
    # a name, never a namespace: the same names in another namespace are not allowed
    assert len(found(isvc(namespace="team-b", tls={"secretName": "web-tls"}), policy)) == 1
