"""Does a live object still carry what the operator last meant for it?

Reconciling an unchanged InferenceService must write nothing, yet a hand edit must be undone.
Two checks, both pure:

* the intent hash: every applied object carries a hash of its rendered manifest in an
  annotation, so a changed spec (including a field that was dropped) is seen at once;
* containment: every field the operator renders must be present in the live object with the
  same value. The apiserver adds defaults (and other controllers add fields) that are not
  ours to judge, so extra live fields are fine; lists must match element by element; values
  the apiserver rewrites into canonical form (quantities such as "0.5" -> "500m") are
  compared by meaning; an empty map or list we render may be absent from the live object.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from .labels import INTENT_HASH

_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))([eE][+-]?\d+|[KMGTPE]i|[numkMGTPE])?$")
_SUFFIX = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}


def intent_hash(obj: Mapping[str, Any]) -> str:
    """A short hash of a rendered manifest, ignoring the hash annotation itself."""
    annotations = dict(obj.get("metadata", {}).get("annotations") or {})
    annotations.pop(INTENT_HASH, None)
    meta = {**obj.get("metadata", {}), "annotations": annotations}
    manifest = {**obj, "metadata": meta}
    # The text hashed is `json.dumps(manifest, sort_keys=True, separators=(",", ":"))`, the
    # same as ever, so live objects' hashes stay valid across versions; orjson writes the
    # same bytes several times faster (a render hashes every object it makes) except for
    # non-ASCII text, which json escapes, and floats below 1e-4, which no manifest carries.
    text = orjson.dumps(manifest, option=orjson.OPT_SORT_KEYS)
    if not text.isascii():
        text = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(text).hexdigest()[:20]


def stamp(obj: dict[str, Any]) -> dict[str, Any]:
    """Return obj with its intent hash annotation set."""
    meta = obj.setdefault("metadata", {})
    meta.setdefault("annotations", {})[INTENT_HASH] = intent_hash(obj)
    return obj


def in_sync(desired: Mapping[str, Any], live: Mapping[str, Any] | None) -> bool:
    """True when applying `desired` over `live` would change nothing the operator owns."""
    if live is None:
        return False
    want = desired.get("metadata", {}).get("annotations", {}).get(INTENT_HASH)
    have = (live.get("metadata", {}).get("annotations") or {}).get(INTENT_HASH)
    return want == have and contained(desired, live)


def contained(want: Any, have: Any) -> bool:
    """Whether every field of `want` is in `have` with an equal value (see module doc)."""
    if isinstance(want, Mapping):
        if not isinstance(have, Mapping):
            return False
        return all(
            _field_contained(value, key in have, have.get(key)) for key, value in want.items()
        )
    if isinstance(want, list):
        return (
            isinstance(have, list)
            and len(want) == len(have)
            and all(contained(w, h) for w, h in zip(want, have, strict=True))
        )
    return want == have or _same_quantity(want, have)


def _field_contained(want: Any, present: bool, have: Any) -> bool:
    if not present:
        return want in ({}, [], None)
    return contained(want, have)


def _same_quantity(a: Any, b: Any) -> bool:
    left, right = quantity(a), quantity(b)
    return left is not None and left == right


def quantity(value: Any) -> Decimal | None:
    """The numeric value of a Kubernetes quantity ("500m", "4Gi", 2), or None if it is not one."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    match = _QUANTITY.match(str(value).strip())
    if match is None:
        return None
    try:
        number = Decimal(match.group(1))
    except InvalidOperation:
        return None
    suffix = match.group(2) or ""
    if suffix[:1] in ("e", "E"):
        return number * Decimal(10) ** int(suffix[1:])
    return number * _SUFFIX[suffix]
