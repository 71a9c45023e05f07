"""What an InferenceService may reference beyond itself, as the cluster admin allows it. Pure.

The operator creates pods with more rights than the person who wrote the InferenceService
(anyone who may create one in a namespace): the pods can mount that namespace's Secrets,
ConfigMaps and PersistentVolumeClaims, tolerate taints, pick nodes and a PriorityClass, and
run an image. Each of those is refused unless the admin listed it in the chart (values
`tenancy.*`, passed to the operator as `MARFLEET_TENANCY`); the defaults allow nothing beyond
marfleet's own images. What the object alone can judge (sizes, shapes, no namespaceSelector
on pod affinity) is refused earlier by the CRD's CEL rules.

Entries name `namespace/name` (Secrets, ConfigMaps, PVCs), `key=value` (node labels), a
taint key (tolerations), a PriorityClass name, or an image prefix; `*` matches any run of
characters (fnmatch), so `*/hf-token` allows that Secret in every namespace and
`zone=*` any value of a label. `refusals` names the field and the rule of each refusal, for
the status and an Event; other features that reference Secrets (e.g. storage credentials)
ask `allows_secret` and report through the same `Refusal`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from marfleet.runtime.storage.uri import parse as parse_uri

CHART_VALUES = "tenancy"
"""The chart's values key; each rule is `tenancy.<name>`."""
RULES = {
    "secrets": "secrets",
    "configMaps": "config_maps",
    "persistentVolumeClaims": "claims",
    "tolerations": "tolerations",
    "nodeSelectors": "node_labels",
    "priorityClasses": "priority_classes",
    "imageRegistries": "image_registries",
    "serviceAccounts": "service_accounts",
}
"""Chart value name -> TenancyPolicy field."""
MAX_SPEC_BYTES = 128 * 1024
"""Every variant's objects copy the shared parts of the spec; the CRD bounds each field, and
this bounds what fields it cannot measure (affinity) and their sum."""


@dataclass(frozen=True)
class Refusal:
    field: str
    """The path of the refused field, e.g. spec.runtime.env[0].valueFrom.secretKeyRef.name."""
    rule: str
    """The allow-list that does not list it, e.g. tenancy.secrets."""
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message} (rule {self.rule})"


@dataclass(frozen=True)
class TenancyPolicy:
    secrets: tuple[str, ...] = ()
    config_maps: tuple[str, ...] = ()
    claims: tuple[str, ...] = ()
    tolerations: tuple[str, ...] = ()
    node_labels: tuple[str, ...] = ()
    priority_classes: tuple[str, ...] = ()
    image_registries: tuple[str, ...] = ()
    service_accounts: tuple[str, ...] = ()
    own_images: tuple[str, ...] = field(default=(), compare=False)
    """marfleet's own images (the operator's settings): always allowed, any tag or digest."""

    @classmethod
    def from_json(cls, text: str, own_images: Iterable[str] = ()) -> TenancyPolicy:
        """The chart's `tenancy` values as JSON (empty: allow nothing beyond marfleet's own)."""
        raw = json.loads(text) if text.strip() else {}
        if not isinstance(raw, dict):
            raise ValueError("the tenancy policy must be a JSON object of lists")
        unknown = sorted(set(raw) - set(RULES))
        if unknown:
            raise ValueError(f"unknown tenancy rules {unknown}; known: {sorted(RULES)}")
        lists: dict[str, tuple[str, ...]] = {}
        for key, value in raw.items():
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise ValueError(f"{CHART_VALUES}.{key} must be a list of non-empty strings")
            lists[RULES[key]] = tuple(value)
        return cls(**lists, own_images=tuple(i for i in own_images if i))

    def allows_secret(self, namespace: str, name: str) -> bool:
        return _matches(self.secrets, f"{namespace}/{name}")

    def allows_config_map(self, namespace: str, name: str) -> bool:
        return _matches(self.config_maps, f"{namespace}/{name}")

    def allows_claim(self, namespace: str, name: str) -> bool:
        return _matches(self.claims, f"{namespace}/{name}")

    def allows_service_account(self, namespace: str, name: str) -> bool:
        return _matches(self.service_accounts, f"{namespace}/{name}")

    def allows_image(self, image: str) -> bool:
        own = [_repository(i) for i in self.own_images]
        prefixes = [*(f"{r}:" for r in own), *(f"{r}@" for r in own)]
        prefixes += [p if p.endswith(("/", ":", "@")) else f"{p}/" for p in self.image_registries]
        return image in self.own_images or any(image.startswith(p) for p in prefixes)


def refusals(obj: Mapping[str, Any], policy: TenancyPolicy) -> tuple[Refusal, ...]:
    """Everything in an InferenceService object the policy does not allow."""
    namespace = obj["metadata"].get("namespace", "default")
    spec = obj.get("spec") or {}
    found: list[Refusal] = []
    found += _runtime(spec.get("runtime") or {}, "spec.runtime", namespace, policy)
    for index, variant in enumerate(spec.get("variants") or []):
        path = f"spec.variants[{index}]"
        found += _runtime(variant.get("runtime") or {}, f"{path}.runtime", namespace, policy)
        found += _model(variant.get("model") or {}, f"{path}.model", namespace, policy)
    found += _scheduling(spec.get("scheduling") or {}, policy)
    found += _tls(spec.get("tls") or {}, namespace, policy)
    size = len(json.dumps(spec, separators=(",", ":")))
    if size > MAX_SPEC_BYTES:
        found.append(
            Refusal(
                "spec",
                "maxSpecBytes",
                f"the spec is {size} bytes as JSON, more than the {MAX_SPEC_BYTES} allowed",
            )
        )
    return tuple(found)


def _runtime(
    runtime: Mapping[str, Any], path: str, namespace: str, policy: TenancyPolicy
) -> Iterator[Refusal]:
    image = runtime.get("image") or ""
    if image and not policy.allows_image(image):
        yield Refusal(
            f"{path}.image",
            f"{CHART_VALUES}.imageRegistries",
            f"image {image!r} is neither marfleet's own nor under an allowed registry",
        )
    for index, entry in enumerate(runtime.get("env") or []):
        source = entry.get("valueFrom") or {}
        where = f"{path}.env[{index}].valueFrom"
        secret = source.get("secretKeyRef")
        if secret is not None and not policy.allows_secret(namespace, secret.get("name", "")):
            yield _not_listed(f"{where}.secretKeyRef.name", "secrets", "Secret", namespace, secret)
        config = source.get("configMapKeyRef")
        if config is not None and not policy.allows_config_map(namespace, config.get("name", "")):
            yield _not_listed(
                f"{where}.configMapKeyRef.name", "configMaps", "ConfigMap", namespace, config
            )


def _not_listed(path: str, rule: str, kind: str, namespace: str, ref: Mapping[str, Any]) -> Refusal:
    name = f"{namespace}/{ref.get('name', '')}"
    return Refusal(path, f"{CHART_VALUES}.{rule}", f"{kind} {name} is not allowed")


def _model(
    model: Mapping[str, Any], path: str, namespace: str, policy: TenancyPolicy
) -> Iterator[Refusal]:
    try:
        source = parse_uri(model.get("uri", ""))
    except ValueError:
        source = None
    if (
        source is not None
        and source.scheme == "pvc"
        and not policy.allows_claim(namespace, source.location)
    ):
        yield Refusal(
            f"{path}.uri",
            f"{CHART_VALUES}.persistentVolumeClaims",
            f"PersistentVolumeClaim {namespace}/{source.location} is not allowed",
        )
    storage = model.get("storage") or {}
    secret = storage.get("secretName") or ""
    if secret and not policy.allows_secret(namespace, secret):
        yield _not_listed(
            f"{path}.storage.secretName", "secrets", "Secret", namespace, {"name": secret}
        )
    account = storage.get("serviceAccountName") or ""
    if account and not policy.allows_service_account(namespace, account):
        yield _not_listed(
            f"{path}.storage.serviceAccountName",
            "serviceAccounts",
            "ServiceAccount",
            namespace,
            {"name": account},
        )


def _tls(tls: Mapping[str, Any], namespace: str, policy: TenancyPolicy) -> Iterator[Refusal]:
    for key in ("secretName", "caSecretName"):
        secret = tls.get(key) or ""
        if secret and not policy.allows_secret(namespace, secret):
            yield _not_listed(f"spec.tls.{key}", "secrets", "Secret", namespace, {"name": secret})


def _scheduling(scheduling: Mapping[str, Any], policy: TenancyPolicy) -> Iterator[Refusal]:
    path = "spec.scheduling"
    for key, value in (scheduling.get("nodeSelector") or {}).items():
        if not _matches(policy.node_labels, f"{key}={value}"):
            yield _node_label(f"{path}.nodeSelector.{key}", f"{key}={value}")
    for index, toleration in enumerate(scheduling.get("tolerations") or []):
        key = str(toleration.get("key") or "")
        if not _matches(policy.tolerations, key):
            yield Refusal(
                f"{path}.tolerations[{index}].key",
                f"{CHART_VALUES}.tolerations",
                f"tolerating taint key {key!r} is not allowed",
            )
    node = (scheduling.get("affinity") or {}).get("nodeAffinity") or {}
    for where, expression in _node_expressions(node):
        for label in _labels_asked(expression):
            if not _matches(policy.node_labels, label):
                yield _node_label(f"{path}.affinity.nodeAffinity.{where}", label)
    priority = scheduling.get("priorityClassName") or ""
    if priority and not _matches(policy.priority_classes, priority):
        yield Refusal(
            f"{path}.priorityClassName",
            f"{CHART_VALUES}.priorityClasses",
            f"PriorityClass {priority!r} is not allowed",
        )


def _node_label(path: str, label: str) -> Refusal:
    return Refusal(
        path, f"{CHART_VALUES}.nodeSelectors", f"selecting nodes by {label!r} is not allowed"
    )


def _node_expressions(node: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(path, expression) of every node selector requirement in a nodeAffinity."""
    required = node.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    terms: list[tuple[str, Mapping[str, Any]]] = [
        (f"requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[{i}]", term)
        for i, term in enumerate(required.get("nodeSelectorTerms") or [])
    ]
    terms += [
        (f"preferredDuringSchedulingIgnoredDuringExecution[{i}].preference", item.get("preference"))
        for i, item in enumerate(node.get("preferredDuringSchedulingIgnoredDuringExecution") or [])
    ]
    for where, term in terms:
        for kind in ("matchExpressions", "matchFields"):
            for index, expression in enumerate((term or {}).get(kind) or []):
                yield f"{where}.{kind}[{index}]", expression


def _labels_asked(expression: Mapping[str, Any]) -> list[str]:
    """`key=value` per value an In expression asks for; `key=*` for any other operator."""
    key = str(expression.get("key", ""))
    values: Sequence[Any] = expression.get("values") or []
    if expression.get("operator") == "In" and values:
        return [f"{key}={value}" for value in values]
    return [f"{key}=*"]


def _matches(patterns: Iterable[str], value: str) -> bool:
    return any(fnmatchcase(value, pattern) for pattern in patterns)


def _repository(image: str) -> str:
    """An image reference without its tag or digest."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name
