"""Leader election on a coordination.k8s.io Lease, the way client-go does it.

Several operator replicas may run; only the holder of the Lease reconciles. A standby takes
the Lease once the holder has not renewed it for `lease_seconds`, judged by the standby's own
clock from when it last saw the record change (so clock skew between nodes does not matter).
Every write is a PUT carrying the resourceVersion that was read, so two candidates can never
both win: the loser gets 409 and stays a standby. A holder that cannot renew for
`renew_deadline_seconds` (shorter than the lease) gives up leadership (the caller stops
reconciling and exits), so it has stopped acting before any standby may start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .kube import ApiError, KubeAPI, Ref

log = logging.getLogger("marfleet.operator.leader")


@dataclass(frozen=True)
class LeaseSettings:
    namespace: str
    name: str
    identity: str
    lease_seconds: float = 15.0
    renew_deadline_seconds: float = 10.0
    renew_seconds: float = 2.0
    retry_seconds: float = 2.0


class LeaderElector:
    def __init__(
        self,
        api: KubeAPI,
        settings: LeaseSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.settings = settings
        self.clock = clock
        self.ref = Ref("coordination.k8s.io/v1", "Lease", settings.namespace, settings.name)
        self._seen: tuple[Any, ...] | None = None
        self._seen_at = 0.0
        self.leading = False

    async def acquire(self) -> None:
        """Return once this replica holds the lease."""
        announced = False
        while not await self.try_acquire_or_renew():
            if not announced:
                log.info("waiting for leadership", extra={"lease": self.settings.name})
                announced = True
            await asyncio.sleep(self.settings.retry_seconds)
        log.info("became leader", extra={"identity": self.settings.identity})

    async def hold(self) -> None:
        """Renew the lease until it cannot be renewed within its duration; then return."""
        last_renewal = self.clock()
        while True:
            await asyncio.sleep(self.settings.renew_seconds)
            try:
                renewed = await self.try_acquire_or_renew()
            except ApiError as error:
                log.warning("lease renewal failed", extra={"error": str(error)})
                renewed = False
            if renewed:
                last_renewal = self.clock()
            elif (
                not self.leading
                or self.clock() - last_renewal >= self.settings.renew_deadline_seconds
            ):
                self.leading = False
                log.error("lost leadership", extra={"identity": self.settings.identity})
                return

    async def try_acquire_or_renew(self) -> bool:
        now = _micro_time()
        lease = await self.api.get(self.ref)
        if lease is None:
            return await self._write(
                self.api.create, self._body(None, now, transitions=0, acquired=now)
            )
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("leaseDurationSeconds"))
        if record != self._seen:
            self._seen, self._seen_at = record, self.clock()
        duration = float(spec.get("leaseDurationSeconds") or self.settings.lease_seconds)
        mine = holder == self.settings.identity
        expired = not holder or self.clock() - self._seen_at >= duration
        if not mine and not expired:
            self.leading = False
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if mine else 1)
        acquired = spec.get("acquireTime") if mine else now
        return await self._write(self.api.replace, self._body(lease, now, transitions, acquired))

    async def release(self) -> None:
        """Give the lease up at shutdown so a standby takes over at once."""
        if not self.leading:
            return
        lease = await self.api.get(self.ref)
        if (
            lease is None
            or (lease.get("spec") or {}).get("holderIdentity") != self.settings.identity
        ):
            return
        lease["spec"] = {**lease["spec"], "holderIdentity": "", "leaseDurationSeconds": 1}
        try:
            await self.api.replace(lease)
        except ApiError as error:
            log.warning("could not release the lease", extra={"error": str(error)})
        self.leading = False

    def _body(
        self, lease: dict[str, Any] | None, now: str, transitions: int, acquired: str | None
    ) -> dict[str, Any]:
        metadata = (
            lease["metadata"]
            if lease is not None
            else {"name": self.settings.name, "namespace": self.settings.namespace}
        )
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": {
                "holderIdentity": self.settings.identity,
                "leaseDurationSeconds": int(self.settings.lease_seconds),
                "acquireTime": acquired or now,
                "renewTime": now,
                "leaseTransitions": transitions,
            },
        }

    async def _write(
        self,
        write: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]],
        body: dict[str, Any],
    ) -> bool:
        try:
            result = await write(body)
        except ApiError as error:
            if error.status in (409, 422):
                self.leading = False
                return False
            raise
        spec = result.get("spec") or {}
        self._seen = (
            spec.get("holderIdentity"),
            spec.get("renewTime"),
            spec.get("leaseDurationSeconds"),
        )
        self._seen_at = self.clock()
        self.leading = True
        return True


def _micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
