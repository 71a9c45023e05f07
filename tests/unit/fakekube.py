"""An in-memory stand-in for `KubeAPI`, for unit tests of the operator's decisions.

A fake, because these tests judge what the controller and the leader elector *decide* (which
writes, in which order, on which picture) without a cluster; the real API server's behaviour
is covered by the integration tests (tests/integration/test_operator*.py). It keeps what a
decision depends on: objects by (apiVersion, kind, namespace, name), a resourceVersion bumped
on every write, uids, optimistic concurrency on PUT (409 on a stale resourceVersion), and a
server-side apply that replaces the applied fields and keeps the status, and one that creates
only (`apply_new`, refused as "apply-refused" when the name exists). Every call is recorded in
`calls`, every write also in `writes`; `fail` queues errors for the next calls.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from typing import Any

from marfleet.operator.kube import ApiError, Ref

ObjectKey = tuple[str, str, str, str]


def object_key(ref: Ref) -> ObjectKey:
    return ref.api_version, ref.kind, ref.namespace, ref.name


class FakeKubeAPI:
    def __init__(self) -> None:
        self.objects: dict[ObjectKey, dict[str, Any]] = {}
        self.calls: list[tuple[str, str, str]] = []
        """(verb, kind, name) of every call, reads included."""
        self.fail: list[ApiError] = []
        """Errors the next calls raise, one per call, first first."""
        self._versions = itertools.count(100)
        self._uids = itertools.count(1)

    # ----- what tests read -----
    @property
    def writes(self) -> list[tuple[str, str, str]]:
        return [call for call in self.calls if call[0] not in ("get", "exists", "apply-refused")]

    def put(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Store an object as if someone else had created it (not recorded as a call)."""
        stored = copy.deepcopy(dict(obj))
        meta = stored.setdefault("metadata", {})
        meta.setdefault("uid", f"uid-{next(self._uids)}")
        meta["resourceVersion"] = str(next(self._versions))
        self.objects[object_key(Ref.of(stored))] = stored
        return copy.deepcopy(stored)

    def stored(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any]:
        return self.objects[(api_version, kind, namespace, name)]

    # ----- the KubeAPI surface (asynchronous, like KubeAPI's) -----
    async def get(self, ref: Ref, *, cached: bool = False) -> dict[str, Any] | None:
        self._record("get", ref.kind, ref.name)
        found = self.objects.get(object_key(ref))
        return copy.deepcopy(found) if found is not None else None

    async def exists(self, ref: Ref) -> bool:
        """A metadata-only read (the object's data is not returned)."""
        ref.path()  # the real client needs the kind's plural
        self._record("exists", ref.kind, ref.name)
        return object_key(ref) in self.objects

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        self._record("apply", obj["kind"], obj["metadata"]["name"])
        key = object_key(Ref.of(obj))
        old = self.objects.get(key)
        new = copy.deepcopy(dict(obj))
        meta = new["metadata"]
        meta["uid"] = old["metadata"]["uid"] if old else f"uid-{next(self._uids)}"
        meta["generation"] = (old["metadata"].get("generation", 1) + 1) if old else 1
        meta["resourceVersion"] = str(next(self._versions))
        if old is not None and "status" in old:
            new["status"] = old["status"]
        self.objects[key] = new
        return copy.deepcopy(new)

    async def apply_new(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Like the API server, a resourceVersion in an apply is a precondition when the
        object exists (none has "1") and ignored when the apply creates it."""
        if object_key(Ref.of(obj)) in self.objects:
            self._record("apply-refused", obj["kind"], obj["metadata"]["name"])
            raise ApiError(409, "Conflict", "the object has been modified")
        meta = {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}
        return await self.apply({**obj, "metadata": meta})

    async def apply_status(
        self, owner: Mapping[str, Any], status: Mapping[str, Any], manager: str = ""
    ) -> dict[str, Any]:
        meta = owner["metadata"]
        self._record("status", owner["kind"], meta["name"])
        key = object_key(Ref.of(owner))
        if key not in self.objects:
            raise ApiError(404, "NotFound", f"{meta['name']} not found")
        stored = self.objects[key]
        stored["status"] = {**(stored.get("status") or {}), **copy.deepcopy(dict(status))}
        stored["metadata"]["resourceVersion"] = str(next(self._versions))
        return copy.deepcopy(stored)

    async def delete(self, ref: Ref, uid: str) -> None:
        self._record("delete", ref.kind, ref.name)
        found = self.objects.get(object_key(ref))
        if found is not None and found["metadata"]["uid"] == uid:
            del self.objects[object_key(ref)]

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        name = meta.get("name") or f"{meta.get('generateName', '')}{next(self._uids)}"
        self._record("create", obj["kind"], name)
        new = copy.deepcopy(dict(obj))
        new["metadata"] = {**new["metadata"], "name": name}
        key = object_key(Ref.of(new))
        if key in self.objects:
            raise ApiError(409, "AlreadyExists", f"{obj['kind']} {name} already exists")
        new["metadata"]["uid"] = f"uid-{next(self._uids)}"
        new["metadata"]["resourceVersion"] = str(next(self._versions))
        self.objects[key] = new
        return copy.deepcopy(new)

    async def replace(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        self._record("replace", obj["kind"], meta["name"])
        key = object_key(Ref.of(obj))
        old = self.objects.get(key)
        if old is None:
            raise ApiError(404, "NotFound", f"{obj['kind']} {meta['name']} not found")
        if meta.get("resourceVersion") != old["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", "the object has been modified")
        new = copy.deepcopy(dict(obj))
        new["metadata"]["resourceVersion"] = str(next(self._versions))
        self.objects[key] = new
        return copy.deepcopy(new)

    def _record(self, verb: str, kind: str, name: str) -> None:
        self.calls.append((verb, kind, name))
        if self.fail:
            raise self.fail.pop(0)
