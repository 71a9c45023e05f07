"""docs/inferenceservice-reference.md, written from the CRD's own schema.

The CRD (crds/inferenceservice.yaml) is the source of truth for every field, default, limit and
validation message, and `kubectl explain` reads the same descriptions; this page only lays them
out as tables a reader can scan. Pure: the parsed CRD in, Markdown out, so a unit test can
compare the committed page with what the CRD says now.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "crds" / "inferenceservice.yaml"
PAGE_PATH = REPO / "docs" / "inferenceservice-reference.md"


@dataclass(frozen=True)
class Field:
    path: str
    type: str
    required: bool
    default: str
    limits: str
    description: str


@dataclass(frozen=True)
class Rule:
    path: str
    message: str


def _inline(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
    return text.removesuffix("\n...").strip()


def _cell(text: str) -> str:
    """Text for a table cell: one line, `|` escaped, `<name>` kept from reading as HTML."""
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _code(text: str) -> str:
    """A code span, also for text that holds a backtick; `|` escaped for a table cell."""
    fence = "``" if "`" in text else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{text}{pad}{fence}".replace("|", "\\|")


def type_of(schema: Mapping[str, Any]) -> str:
    if schema.get("x-kubernetes-int-or-string"):
        return "integer or string"
    kind = schema.get("type", "")
    if kind == "array":
        return f"array of {type_of(schema.get('items', {}))}"
    if kind == "object" and "additionalProperties" in schema:
        return f"map of {type_of(schema['additionalProperties'])}"
    if kind == "object" and schema.get("x-kubernetes-preserve-unknown-fields"):
        return "object (free-form)"
    return str(kind or "any")


def limits_of(schema: Mapping[str, Any]) -> str:
    parts = []
    for key, label in (
        ("minimum", "≥"),
        ("maximum", "≤"),
        ("minLength", "length ≥"),
        ("maxLength", "length ≤"),
        ("minItems", "items ≥"),
        ("maxItems", "items ≤"),
        ("maxProperties", "entries ≤"),
    ):
        if key in schema:
            parts.append(f"{label} {schema[key]}")
    if "enum" in schema:
        parts.append("one of " + ", ".join(_code(str(v)) for v in schema["enum"]))
    if "pattern" in schema:
        parts.append(f"matches {_code(schema['pattern'])}")
    if "format" in schema:
        parts.append(f"format {schema['format']}")
    return "; ".join(parts)


def walk(schema: Mapping[str, Any], path: str, required: bool) -> Iterator[Field]:
    """Every field below `schema` (itself included), depth first, in the CRD's order."""
    yield Field(
        path=path,
        type=type_of(schema),
        required=required,
        default=_inline(schema["default"]) if "default" in schema else "",
        limits=limits_of(schema),
        description=str(schema.get("description", "")),
    )
    if schema.get("type") == "array":
        yield from _children(schema.get("items", {}), f"{path}[]")
    else:
        yield from _children(schema, path)


def _children(schema: Mapping[str, Any], path: str) -> Iterator[Field]:
    needed = set(schema.get("required", []))
    for name, child in (schema.get("properties") or {}).items():
        yield from walk(child, f"{path}.{name}", name in needed)


def rules(schema: Mapping[str, Any], path: str) -> Iterator[Rule]:
    """The CEL rules (x-kubernetes-validations) with the field each one is reported on."""
    for rule in schema.get("x-kubernetes-validations") or []:
        where = (path + str(rule.get("fieldPath", ""))).lstrip(".")
        yield Rule(where, " ".join(str(rule["message"]).split()))
    if schema.get("type") == "array":
        yield from rules(schema.get("items", {}), f"{path}[]")
    for name, child in (schema.get("properties") or {}).items():
        yield from rules(child, f"{path}.{name}")


def _field_table(fields: Sequence[Field]) -> list[str]:
    lines = ["| field | type | default | limits | description |", "|---|---|---|---|---|"]
    for f in fields:
        name = _code(f.path) + (" (required)" if f.required else "")
        default = _code(f.default) if f.default else ""
        lines.append(f"| {name} | {f.type} | {default} | {f.limits} | {_cell(f.description)} |")
    return lines


def render(crd: Mapping[str, Any]) -> str:
    spec = crd["spec"]
    (version,) = [v for v in spec["versions"] if v.get("storage")]
    root = version["schema"]["openAPIV3Schema"]
    names = spec["names"]
    api_version = f"{spec['group']}/{version['name']}"
    lines = [
        "# InferenceService reference",
        "",
        "<!-- Generated from crds/inferenceservice.yaml by `python -m e2e.docs write`;",
        "     edit the CRD's descriptions, not this page. A unit test keeps the two in step. -->",
        "",
        f"`apiVersion: {api_version}`, `kind: {names['kind']}`, {spec['scope'].lower()}; "
        f"short name {', '.join(f'`{n}`' for n in names.get('shortNames', []))}, "
        f"category {', '.join(f'`{c}`' for c in names.get('categories', []))}.",
        "",
        _cell(str(root.get("description", ""))),
        "",
        "Fields are written as paths (`[]` marks the items of a list). Defaults are filled in by",
        "the apiserver when the object is created; limits are enforced by it, so a manifest",
        "outside them is refused at `kubectl apply` with the message listed under",
        "[Validation rules](#validation-rules).",
        "",
        "## spec",
        "",
    ]
    properties = root["properties"]
    lines += _field_table(list(walk(properties["spec"], "spec", True))[1:])
    lines += ["", "## status", "", "Written by the operator only.", ""]
    lines += _field_table(list(walk(properties["status"], "status", False))[1:])
    lines += [
        "",
        "## Validation rules",
        "",
        "Checked by the apiserver (CEL) on every create and update; the message is what",
        "`kubectl apply` prints.",
        "",
        "| reported on | message |",
        "|---|---|",
    ]
    lines += [
        f"| {_code(r.path) if r.path else 'the object'} | {_cell(r.message)} |"
        for r in rules(root, "")
    ]
    lines += [
        "",
        "## kubectl get columns",
        "",
        "| column | shows | description |",
        "|---|---|---|",
    ]
    for column in version.get("additionalPrinterColumns", []):
        wide = " (with `-o wide`)" if column.get("priority", 0) > 0 else ""
        lines.append(
            f"| {column['name']}{wide} | {_code(column['jsonPath'])} | "
            f"{_cell(column.get('description', ''))} |"
        )
    return "\n".join(lines) + "\n"


def load_crd(path: Path = CRD_PATH) -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load(path.read_text())
    return crd
