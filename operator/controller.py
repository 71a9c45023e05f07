"""Reconciliation: from the store's picture of one InferenceService to the few writes that make
the cluster match its spec, and no write at all when it already does.

Watch events (InferenceServices, their children, the CRDs of optional add-ons) only update the
store and queue the affected InferenceService; workers take keys off the queue one at a time
per key. A reconciliation renders the desired objects, applies those whose live copy has
drifted (see compare.py), deletes children no longer wanted, and applies the status when it
differs from the stored one. A hand-deleted or hand-edited child produces a watch event, so it
is repaired at once. What cannot be fixed by retrying (an invalid child, a name taken by
someone else's object) ends up in status and Events; what can (conflicts, timeouts, an
unreachable API server) is retried with backoff. Nothing here raises out of a worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from . import compare, labels, references, render, rollout, spec, status, tenancy, traffic
from .kube import FIELD_MANAGER, ApiError, KubeAPI, Ref
from .metrics import OperatorMetrics
from .store import Key, Store, key_of, owned_by
from .workqueue import WorkQueue

log = logging.getLogger("marfleet.operator.controller")

KEDA_CRD = "scaledobjects.keda.sh"
SERVICE_MONITOR_CRD = "servicemonitors.monitoring.coreos.com"
ADDON_CRDS = (KEDA_CRD, SERVICE_MONITOR_CRD)


@dataclass(frozen=True)
class ControllerSettings:
    render: render.RenderContext
    identity: str
    workers: int = 16
    resync_seconds: float = 600.0
    tenancy: tenancy.TenancyPolicy = field(default_factory=tenancy.TenancyPolicy)
    now: Callable[[], str] = field(
        default=lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), compare=False
    )


class Controller:
    def __init__(
        self, api: KubeAPI, settings: ControllerSettings, metrics: OperatorMetrics
    ) -> None:
        self.api = api
        self.settings = settings
        self.metrics = metrics
        self.store = Store()
        self.queue: WorkQueue[Key] = WorkQueue()
        metrics.queue_depth.set_function(self.queue.depth)
        self.addons: set[str] = set()
        self._reported_errors: dict[Key, tuple[str, ...]] = {}
        self._rendered: dict[Key, _Rendered] = {}
        self.children_listed: Callable[[], bool] = lambda: False
        """Whether every child watch has listed, so that the store holds every child of ours
        (app.py wires it to the watches; until it says so, children the store lacks are read
        from the API server, never presumed new)."""
        self._name_conflicts: set[Key] = set()
        """InferenceServices one of whose names was found taken: their children are read
        before anything is applied (see _apply_all)."""
        self._verified: dict[Key, dict[tuple[str, str], tuple[str, int]]] = {}
        """Per child: (intent hash, the store's content version) last found in sync, so a
        requeue by a status event neither renders nor compares anything."""

    # ----- watch events (called by the watches, on the event loop) -----
    def on_inferenceservice(self, event_type: str | None, obj: Mapping[str, Any]) -> None:
        self.metrics.count(self.metrics.watch_events, spec.KIND)
        if event_type == "DELETED":
            key = self.store.remove_isvc(obj)
            self._reported_errors.pop(key, None)
            self._rendered.pop(key, None)
            self._verified.pop(key, None)
            self._name_conflicts.discard(key)
        else:
            changed = self.store.put_isvc(obj)
            if changed is not None:
                self.queue.add(changed)
        self.metrics.managed.set(len(self.store.isvcs))

    def on_child(self, event_type: str | None, obj: Mapping[str, Any]) -> None:
        self.metrics.count(self.metrics.watch_events, obj["kind"])
        if event_type == "DELETED":
            affected = self.store.remove_child(obj)
        else:
            affected = self.store.put_child(obj)
        for key in affected:
            if key in self.store.isvcs:
                self.queue.add(key)

    def on_crd(self, event_type: str | None, obj: Mapping[str, Any]) -> None:
        name = obj["metadata"]["name"]
        established = any(
            c.get("type") == "Established" and c.get("status") == "True"
            for c in (obj.get("status") or {}).get("conditions") or []
        )
        before = set(self.addons)
        if event_type != "DELETED" and established:
            self.addons.add(name)
        else:
            self.addons.discard(name)
        if self.addons != before:
            log.info("add-on CRDs changed", extra={"installed": sorted(self.addons)})
            for key in list(self.store.isvcs):
                self.queue.add(key)

    def render_context(self) -> render.RenderContext:
        return replace(
            self.settings.render,
            keda_installed=KEDA_CRD in self.addons,
            service_monitor_installed=SERVICE_MONITOR_CRD in self.addons,
        )

    # ----- workers -----
    async def run(self) -> None:
        """Reconcile queued keys until cancelled, re-queueing everything every resync period."""
        workers = [asyncio.create_task(self._worker()) for _ in range(self.settings.workers)]
        try:
            while True:
                await asyncio.sleep(self.settings.resync_seconds)
                for key in list(self.store.isvcs):
                    self.queue.add(key)
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            started = time.monotonic()
            try:
                await self.reconcile(key)
            except Exception as error:
                delay = self.queue.retry_later(key)
                self.metrics.count(self.metrics.reconciles, "error")
                log.warning(
                    "reconcile failed, will retry",
                    exc_info=not isinstance(error, ApiError),
                    extra={"isvc": "/".join(key), "error": str(error), "retry_in": delay},
                )
            else:
                self.queue.succeeded(key)
                self.metrics.count(self.metrics.reconciles, "success")
            finally:
                self.queue.done(key)
                self.metrics.reconcile_duration.observe(time.monotonic() - started)

    async def reconcile(self, key: Key) -> None:
        obj = self.store.isvcs.get(key)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            return
        isvc = spec.parse(obj)
        ctx = self.render_context()
        refused = tuple(str(r) for r in tenancy.refusals(obj, self.settings.tenancy))
        ready = not refused and await self._router_ready(key, isvc)
        missing = {} if refused else await self._missing_secrets(key, isvc)
        router_missing = None if refused or ready else await self._missing_router_ca(key, isvc)
        inputs = _Inputs(ready, missing, router_missing)
        desired, full = self._render(key, isvc, ctx, inputs)
        if not full and not refused and not self._all_verified(key, isvc, desired):
            desired, full = self._render(key, isvc, ctx, inputs, full=True)
        errors: list[str] = []
        failed: ApiError | None = None
        try:
            if not refused:
                errors, failed = await self._apply_all(key, isvc, desired)
            await self._update_status(key, obj, isvc, desired, ctx, errors, refused)
            if missing or router_missing:
                # Secrets are not watched: look again soon, so creating it is noticed.
                self.queue.add_after(key, SECRET_RECHECK_SECONDS)
        except ApiError as error:
            if not _going_away(error):
                raise
            log.info("namespace or object is being deleted", extra={"isvc": "/".join(key)})
            return
        if failed is not None:
            raise failed

    async def _apply_all(
        self, key: Key, isvc: spec.InferenceService, desired: render.Desired
    ) -> tuple[list[str], ApiError | None]:
        """Apply every desired child and prune the unwanted ones; return (what went wrong,
        the error to retry with backoff, if any).

        A child whose name someone else's object holds makes the whole InferenceService wait:
        everything else depends on it by name (an autoscaler on the Deployment, the router
        Deployment on its ServiceAccount, the RoleBinding on both, the router on the variant
        Services), so applying the rest would scale, bind or route to the other object.
        A child the store does not hold is created only if its name is free (`apply_new`: one
        call, no read first), as soon as what it names is known to be ours and not before
        (`_in_dependency_order`); when a name turns out taken, what this pass created is deleted
        again, and from then on this InferenceService's names are read before anything is
        applied, until none is taken (as every name the store lacks is read while the watches
        have not listed).
        An error the API server answers with 5xx is reported like a refusal (the status says
        what the server said) and retried with backoff, since it may not go away by itself."""
        if key in self._name_conflicts or not self.children_listed():
            haves = await asyncio.gather(
                *(self._stored_or_live(key, Ref.of(want)) for want in desired.objects)
            )
        else:
            haves = [
                self.store.child(key, want["kind"], want["metadata"]["name"])
                for want in desired.objects
            ]
        taken = [
            _taken(want)
            for want, have in zip(desired.objects, haves, strict=True)
            if have is not None and not owned_by(have, isvc.uid)
        ]
        if taken:
            self._name_conflicts.add(key)
            return [*taken, NOTHING_APPLIED], None
        self._name_conflicts.discard(key)
        have_of = {id(want): have for want, have in zip(desired.objects, haves, strict=True)}
        errors: list[str] = []
        failed: ApiError | None = None
        applied: list[str] = []
        created: list[Mapping[str, Any]] = []
        results = await _in_dependency_order(
            desired.objects,
            lambda want: self._ensure(key, isvc, want, have_of[id(want)], applied, created),
        )
        taken = [str(r) for r in results if isinstance(r, NameTaken)]
        if taken:
            await self._take_back(key, created)
            self._name_conflicts.add(key)
            return [*taken, NOTHING_APPLIED], None
        for want, result in zip(desired.objects, results, strict=True):
            if isinstance(result, _Unmet):
                continue
            if isinstance(result, ApiError) and result.status >= 500:
                errors.append(f"{want['kind']} {want['metadata']['name']}: {result.message}")
                failed = result
            elif isinstance(result, BaseException):
                raise result
            elif result is not None:
                errors.append(result)
        if applied:
            log.info("applied", extra={"isvc": "/".join(key), "objects": applied})
        if failed is None:
            await self._prune(key, isvc, desired)
        return errors, failed

    def _render(
        self,
        key: Key,
        isvc: spec.InferenceService,
        ctx: render.RenderContext,
        inputs: _Inputs,
        *,
        full: bool = False,
    ) -> tuple[render.Desired, bool]:
        """The desired objects. Rendered again only when an input changed or `full` is asked
        for; otherwise the last render's outline (kind, name and intent hash of each object,
        no content), which is all a reconciliation needs while every child is in sync. Most
        reconciliations are requeues by a child's status event, and keeping only outlines
        keeps the memory per InferenceService small. Returns (desired, whether it is full)."""
        last = self._rendered.get(key)
        if (
            not full
            and last is not None
            and (last.isvc, last.ctx, last.inputs) == (isvc, ctx, inputs)
        ):
            return last.outline, False
        desired = render.render(
            isvc,
            ctx,
            router_ready=inputs.router_ready,
            missing=inputs.missing,
            router_missing=inputs.router_missing,
        )
        self.metrics.renders.inc()
        outline = replace(desired, objects=tuple(_outline(o) for o in desired.objects))
        self._rendered[key] = _Rendered(isvc, ctx, inputs, outline)
        return desired, True

    def _all_verified(self, key: Key, isvc: spec.InferenceService, desired: render.Desired) -> bool:
        """Whether every desired child was found in sync and has not changed since."""
        verified = self._verified.get(key, {})
        for want in desired.objects:
            kind, name = want["kind"], want["metadata"]["name"]
            have = self.store.child(key, kind, name)
            if have is None or not owned_by(have, isvc.uid):
                return False
            token = (_intent(want), self.store.content_version(key[0], kind, name))
            if verified.get((kind, name)) != token:
                return False
        return True

    async def _missing_secrets(
        self, key: Key, isvc: spec.InferenceService
    ) -> dict[str, render.Missing]:
        """Variants a Secret of whose pods does not exist: its model.storage Secret, or the
        certificate Secret every variant serves TLS with. Only each Secret's metadata is asked
        for, once; without the right to read it, nothing is judged."""
        wanted: list[tuple[str, str, str]] = []  # (variant, Secret, field)
        for variant in isvc.variants:
            if variant.model.storage.secret_name:
                wanted.append((variant.name, variant.model.storage.secret_name, _STORAGE))
            if isvc.tls.enabled:
                wanted.append((variant.name, isvc.tls.secret_name, _TLS))
        found: dict[str, bool] = {}
        missing: dict[str, render.Missing] = {}
        for variant_name, name, field_ in wanted:
            if name not in found:
                found[name] = await self._secret_exists(key, name)
            if not found[name] and variant_name not in missing:
                reason, what = _SECRET_FIELDS[field_]
                missing[variant_name] = render.Missing(
                    reason,
                    f"Secret {key[0]}/{name} ({field_}) does not exist: create it with {what}, "
                    "or fix the name; the variant's pods are left as they are until then",
                )
        return missing

    async def _missing_router_ca(
        self, key: Key, isvc: spec.InferenceService
    ) -> render.Missing | None:
        """The router's CA Secret, when it is another Secret than the certificate's and does
        not exist (asked only while no router pod is available: a running router has it)."""
        tls = isvc.tls
        if not (isvc.multi_variant and tls.enabled) or tls.ca_secret == tls.secret_name:
            return None
        if await self._secret_exists(key, tls.ca_secret):
            return None
        return render.Missing(
            status.TLS_SECRET_MISSING,
            f"Secret {key[0]}/{tls.ca_secret} (tls.caSecretName) does not exist: create it with "
            f"the CA that signed the variants' certificate under key {tls.ca_key}, or fix the "
            f"name; the router's pods wait for it",
        )

    async def _secret_exists(self, key: Key, name: str) -> bool:
        """Whether Secret `name` of the InferenceService's namespace exists (its metadata
        only); True when the operator may not read it: then nothing is judged."""
        try:
            return await self.api.exists(Ref("v1", "Secret", key[0], name))
        except ApiError as error:
            if error.status != 403:
                raise
            log.warning(
                "cannot check a Secret",
                extra={"isvc": "/".join(key), "secret": name, "error": error.message},
            )
            return True

    async def _router_ready(self, key: Key, isvc: spec.InferenceService) -> bool:
        """Whether a router pod can take the stable Service's traffic. Before the watches have
        listed (just after a restart) the router Deployment is read from the API server when
        the store has not seen it yet: judging it absent then would point the stable Service
        away from the router and back."""
        if not isvc.multi_variant:
            return False
        if not self.children_listed():
            ref = Ref("apps/v1", "Deployment", key[0], labels.router_name(isvc))
            await self._stored_or_live(key, ref)
        return traffic.router_ready(isvc, self.store.children_of(key))

    async def _stored_or_live(self, key: Key, ref: Ref) -> Mapping[str, Any] | None:
        """A child as the store has it, or else as the API server has it (then stored)."""
        have: Mapping[str, Any] | None = self.store.child(key, ref.kind, ref.name)
        if have is None:
            # from the watch cache: the store has every child of ours the watches have listed,
            # so this is mostly "is the name free", asked once per child when it is created
            have = await self.api.get(ref, cached=True)
            if have is not None:
                self.store.put_child(have)
        return have

    async def _ensure(
        self,
        key: Key,
        isvc: spec.InferenceService,
        want: dict[str, Any],
        have: Mapping[str, Any] | None,
        applied: list[str],
        created: list[Mapping[str, Any]],
    ) -> str | None:
        """Make one child (`have`: as it is now, ours, or None when the store holds none) match
        `want`; return a message if that cannot be done by retrying, raise NameTaken if its
        name is someone else's. What was written is added to `applied` ("Kind/name", and
        " (new)" for a creation): one log line per reconciliation, not one per object; what
        was created, to `created`."""
        kind, name = want["kind"], want["metadata"]["name"]
        if have is None:
            try:
                result = await self.api.apply_new(want)
            except ApiError as error:
                if error.status != 409:
                    return self._refused(error, kind, name)
                have = await self.api.get(Ref.of(want))
                if have is None:
                    raise  # deleted in between: retry
                self.store.put_child(have)
                if not owned_by(have, isvc.uid):
                    raise NameTaken(_taken(want)) from None
            else:
                self._written(key, want, result)
                applied.append(f"{kind}/{name} (new)")
                created.append(result)
                return None
        if self._in_sync(key, want, have):
            return None
        try:
            result = await self.api.apply(want)
        except ApiError as error:
            return self._refused(error, kind, name)
        self._written(key, want, result)
        applied.append(f"{kind}/{name}")
        return None

    @staticmethod
    def _refused(error: ApiError, kind: str, name: str) -> str:
        """The message for an apply the API server refused for good; re-raise the rest."""
        if error.retriable or _going_away(error):
            raise error
        return f"{kind} {name}: {error.message}"

    def _written(self, key: Key, want: Mapping[str, Any], result: dict[str, Any]) -> None:
        kind, name = want["kind"], want["metadata"]["name"]
        self.metrics.count(self.metrics.writes, "apply", kind)
        self.store.put_child(result)
        # what the API server answers to our apply is what we meant (force=true)
        self._verified.setdefault(key, {})[(kind, name)] = (
            _intent(want),
            self.store.content_version(key[0], kind, name),
        )

    async def _take_back(self, key: Key, created: list[Mapping[str, Any]]) -> None:
        """Delete what this reconciliation created, a name having turned out taken."""
        for obj in created:
            await self.api.delete(Ref.of(obj), obj["metadata"]["uid"])
            self.metrics.count(self.metrics.writes, "delete", obj["kind"])
            self.store.remove_child(obj)
        log.warning(
            "a name is taken: took back what this pass created",
            extra={
                "isvc": "/".join(key),
                "objects": [f"{o['kind']}/{o['metadata']['name']}" for o in created],
            },
        )

    def _in_sync(self, key: Key, want: Mapping[str, Any], have: Mapping[str, Any] | None) -> bool:
        if have is None:
            return False
        child = (want["kind"], want["metadata"]["name"])
        token = (_intent(want), self.store.content_version(key[0], *child))
        verified = self._verified.setdefault(key, {})
        if verified.get(child) == token:
            return True
        if not compare.in_sync(want, have):
            return False
        verified[child] = token
        return True

    async def _prune(self, key: Key, isvc: spec.InferenceService, desired: render.Desired) -> None:
        """Delete children this InferenceService no longer wants (never a blocked variant's)."""
        keep = {(o["kind"], o["metadata"]["name"]) for o in desired.objects}
        frozen = {labels.variant_object_name(isvc, v) for v in desired.blocked}
        for (kind, name), have in self.store.children_of(key).items():
            if (kind, name) in keep or name in frozen or not owned_by(have, isvc.uid):
                continue
            await self.api.delete(Ref.of(have), have["metadata"]["uid"])
            self.metrics.count(self.metrics.writes, "delete", kind)
            self.store.remove_child(have)
            log.info("deleted", extra={"isvc": "/".join(key), "kind": kind, "object": name})

    async def _update_status(
        self,
        key: Key,
        obj: Mapping[str, Any],
        isvc: spec.InferenceService,
        desired: render.Desired,
        ctx: render.RenderContext,
        errors: list[str],
        refused: tuple[str, ...] = (),
    ) -> None:
        """Apply the computed status; an Event for each condition transition, each new apply
        error and each new refusal by the tenancy policy (`refused`)."""
        previous = obj.get("status") or {}
        computed, transitions = status.compute(
            isvc,
            desired,
            self.store.children_of(key),
            ctx,
            previous=previous,
            errors=errors,
            refused=refused,
            now=self.settings.now(),
            weights=rollout.effective_weights(obj),
        )
        if computed != status.own_part(previous):
            result = await self.api.apply_status(obj, computed)
            self.metrics.count(self.metrics.writes, "status", spec.KIND)
            self.store.put_isvc(result)
        for change in transitions:
            await self.record_event(
                obj,
                "Normal" if change.status == "True" else "Warning",
                change.reason,
                f"{change.type} is {change.status}: {change.message}",
            )
        reported = self._reported_errors.get(key, ())
        for reason, problems in (("ApplyFailed", errors), (status.POLICY_REFUSED, refused)):
            for problem in problems:
                if problem not in reported:
                    await self.record_event(obj, "Warning", reason, problem)
        self._reported_errors[key] = (*errors, *refused)

    async def record_event(
        self, obj: Mapping[str, Any], kind: str, reason: str, message: str
    ) -> None:
        meta = obj["metadata"]
        now = self.settings.now()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": obj["apiVersion"],
                "kind": obj["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid", ""),
            },
            "type": kind,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "reportingInstance": self.settings.identity,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.api.create(event)
        except ApiError as error:
            if _going_away(error):
                return
            log.warning(
                "could not record an event",
                extra={"isvc": "/".join(key_of(obj)), "reason": reason, "error": str(error)},
            )
            return
        self.metrics.count(self.metrics.writes, "event", "Event")


async def _in_dependency_order(
    objects: Sequence[dict[str, Any]],
    ensure: Callable[[dict[str, Any]], Awaitable[str | None]],
) -> list[str | BaseException | None]:
    """`ensure` each child as soon as every child it names has been ensured, all at once
    otherwise; the results (or exceptions) in the order of `objects`. A child whose
    prerequisite raised is not ensured (its result is `_Unmet`).

    Children are created only if their name is free, so nothing may be made to point at
    someone else's object by name: a child waits for what it names (`references.named_by`), and
    only for that, so a slow creation (a Service waits for its cluster IP, which the API
    server allocates one at a time) holds up nothing that does not name it."""
    present = {(o["kind"], o["metadata"]["name"]) for o in objects}
    tasks: dict[tuple[str, str], asyncio.Task[str | None]] = {}

    async def one(want: dict[str, Any]) -> str | None:
        for ref in references.named_by(want) & present:
            try:
                await asyncio.shield(tasks[ref])
            except Exception as error:  # not a cancellation: that goes on up
                raise _Unmet(f"{ref[0]} {ref[1]}") from error
        return await ensure(want)

    # every child's task exists before any runs (a task waits on its prerequisites' tasks)
    for want in objects:
        tasks[(want["kind"], want["metadata"]["name"])] = asyncio.ensure_future(one(want))
    return await asyncio.gather(*tasks.values(), return_exceptions=True)


class _Unmet(Exception):
    """A child was not ensured: a child it names could not be."""


NOTHING_APPLIED = "nothing is applied while a name is taken"

_STORAGE, _TLS = "model.storage.secretName", "tls.secretName"
_SECRET_FIELDS = {
    _STORAGE: (status.STORAGE_SECRET_MISSING, "the store's credentials"),
    _TLS: (status.TLS_SECRET_MISSING, "the variants' certificate and key (tls.crt, tls.key)"),
}
"""Per field naming a Secret the variants' pods mount: the ModelsReady reason when it does not
exist, and what it must hold."""


class NameTaken(Exception):
    """A child's name is held by an object that is not this InferenceService's."""


def _taken(want: Mapping[str, Any]) -> str:
    return (
        f"{want['kind']} {want['metadata']['name']} already exists and is not this "
        "InferenceService's; delete or rename it, or rename this InferenceService or variant"
    )


@dataclass(frozen=True)
class _Inputs:
    """What a render takes beyond the spec and the context, as the controller observed it."""

    router_ready: bool
    missing: Mapping[str, render.Missing]
    router_missing: render.Missing | None


@dataclass(frozen=True)
class _Rendered:
    """The inputs of an InferenceService's last render, and the outline of what it gave."""

    isvc: spec.InferenceService
    ctx: render.RenderContext
    inputs: _Inputs
    outline: render.Desired


def _intent(obj: Mapping[str, Any]) -> str:
    return str(obj["metadata"]["annotations"][labels.INTENT_HASH])


def _outline(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "metadata": {
            "name": meta["name"],
            "namespace": meta.get("namespace", ""),
            "annotations": {labels.INTENT_HASH: _intent(obj)},
        },
    }


SECRET_RECHECK_SECONDS = 10.0


def _going_away(error: ApiError) -> bool:
    """The InferenceService or its namespace is being deleted: nothing left to reconcile."""
    return "NamespaceTerminating" in error.causes or (
        error.status == 404 and error.reason == "NotFound" and spec.PLURAL in error.message
    )
