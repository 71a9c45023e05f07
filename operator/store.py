"""The operator's picture of the cluster: InferenceServices and their children, as last seen.

Fed by the watch events (watch.py) (and by the results of the operator's own writes), read
by reconciliations, so a reconciliation of a converged object makes no API calls at all.
Only touched from the event loop's thread, so it needs no locks.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from . import labels

Key = tuple[str, str]
"""(namespace, name) of an InferenceService."""
ChildKey = tuple[str, str]
"""(kind, name) of a child within its InferenceService's namespace."""


def key_of(obj: Mapping[str, Any]) -> Key:
    meta = obj["metadata"]
    return meta.get("namespace", ""), meta["name"]


def owner_key(obj: Mapping[str, Any]) -> Key | None:
    """The InferenceService a child belongs to, from its labels."""
    meta = obj["metadata"]
    owner = (meta.get("labels") or {}).get(labels.ISVC)
    return (meta.get("namespace", ""), owner) if owner else None


def _child_key(obj: Mapping[str, Any]) -> ChildKey:
    return obj["kind"], obj["metadata"]["name"]


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    refs = obj["metadata"].get("ownerReferences") or []
    return any(ref.get("uid") == uid and ref.get("controller") for ref in refs)


def _newer(new: Mapping[str, Any], old: Mapping[str, Any] | None) -> bool:
    """Whether `new` is a later version than `old`. Not when it is older (a late watch event
    after the operator's own write) nor the same (the watch event of the operator's own
    write, whose answer is stored already): nothing changed, nothing to reconcile.

    resourceVersions are opaque to clients in general; the API server's are etcd revisions,
    so they are compared as numbers when both are numbers, and otherwise only for equality."""
    if old is None:
        return True
    a = str(new["metadata"].get("resourceVersion", ""))
    b = str(old["metadata"].get("resourceVersion", ""))
    if a.isdigit() and b.isdigit():
        return int(a) > int(b)
    return not a or a != b


_VOLATILE = frozenset({"resourceVersion", "generation", "managedFields"})
_BOOKKEEPING_ANNOTATIONS = frozenset({"deployment.kubernetes.io/revision"})
"""Annotations a controller of the cluster sets on the operator's children to count its own
work (the Deployment controller its rollout revision): not a change in what the child is."""


def _same_content(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two versions of an object differ at most in status and bookkeeping metadata."""
    if {k: v for k, v in a.items() if k not in ("status", "metadata")} != {
        k: v for k, v in b.items() if k not in ("status", "metadata")
    }:
        return False
    return _content_meta(a["metadata"]) == _content_meta(b["metadata"])


def _content_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    kept = {k: v for k, v in meta.items() if k not in _VOLATILE}
    annotations = {
        k: v
        for k, v in (kept.pop("annotations", None) or {}).items()
        if k not in _BOOKKEEPING_ANNOTATIONS
    }
    if annotations:
        kept["annotations"] = annotations
    return kept


def _trimmed(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in obj["metadata"].items() if k != "managedFields"}
    return {**obj, "metadata": meta}


class Store:
    def __init__(self) -> None:
        self.isvcs: dict[Key, dict[str, Any]] = {}
        self._children: dict[Key, dict[ChildKey, dict[str, Any]]] = {}
        self._owner_of: dict[tuple[str, str, str], Key] = {}
        self._content: dict[tuple[str, str, str], int] = {}
        self._versions = itertools.count(1)

    def put_isvc(self, obj: Mapping[str, Any]) -> Key | None:
        """Record an InferenceService; return its key, or None when this version is not newer
        than the one held (nothing to reconcile)."""
        key = key_of(obj)
        if not _newer(obj, self.isvcs.get(key)):
            return None
        self.isvcs[key] = _trimmed(obj)
        return key

    def remove_isvc(self, obj: Mapping[str, Any]) -> Key:
        key = key_of(obj)
        self.isvcs.pop(key, None)
        return key

    def put_child(self, obj: Mapping[str, Any]) -> set[Key]:
        """Record a child; return the InferenceServices affected (old and new owner)."""
        owner = owner_key(obj)
        old = self._children.get(owner, {}).get(_child_key(obj)) if owner is not None else None
        if not _newer(obj, old):
            return set()
        ident = (obj["metadata"].get("namespace", ""), obj["kind"], obj["metadata"]["name"])
        version = self._content.get(ident)
        affected = self.remove_child(obj)
        if owner is not None:
            stored = _trimmed(obj)
            self._children.setdefault(owner, {})[_child_key(obj)] = stored
            self._owner_of[ident] = owner
            same = old is not None and version is not None and _same_content(old, stored)
            self._content[ident] = version if same and version else next(self._versions)
            affected.add(owner)
        return affected

    def remove_child(self, obj: Mapping[str, Any]) -> set[Key]:
        meta = obj["metadata"]
        ident = (meta.get("namespace", ""), obj["kind"], meta["name"])
        owner = self._owner_of.pop(ident, None)
        self._content.pop(ident, None)
        if owner is None:
            return set()
        children = self._children.get(owner, {})
        children.pop((obj["kind"], meta["name"]), None)
        if not children:
            self._children.pop(owner, None)
        return {owner}

    def children_of(self, key: Key) -> dict[ChildKey, dict[str, Any]]:
        return dict(self._children.get(key, {}))

    def child(self, key: Key, kind: str, name: str) -> dict[str, Any] | None:
        """One child of `key` as last seen, or None."""
        return self._children.get(key, {}).get((kind, name))

    def content_version(self, namespace: str, kind: str, name: str) -> int:
        """A number that changes whenever a child changes in anything but its status and
        bookkeeping metadata (resourceVersion, generation); 0 for an unknown child. A
        controller that found a child in sync needs to look again only when it changes."""
        return self._content.get((namespace, kind, name), 0)
