"""The leader elector without a cluster: acquire, renew, lose and release a Lease, with a fake
clock and the in-memory API (tests/unit/fakekube.py), and two candidates racing."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, cast

from marfleet.operator.kube import ApiError, KubeAPI, Ref
from marfleet.operator.leader import LeaderElector, LeaseSettings

from tests.unit.fakekube import FakeKubeAPI

LEASE = ("coordination.k8s.io/v1", "Lease", "ops", "marfleet")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def elector(api: FakeKubeAPI, identity: str, clock: Clock, **overrides: Any) -> LeaderElector:
    settings = LeaseSettings(namespace="ops", name="marfleet", identity=identity, **overrides)
    return LeaderElector(cast(KubeAPI, api), settings, clock=clock)


def attempt(candidate: LeaderElector) -> bool:
    return asyncio.run(candidate.try_acquire_or_renew())


def holder(api: FakeKubeAPI) -> str:
    spec: dict[str, Any] = api.stored(*LEASE)["spec"]
    return str(spec["holderIdentity"])


def test_the_first_candidate_creates_the_lease_and_leads() -> None:
    api, clock = FakeKubeAPI(), Clock()
    a = elector(api, "a", clock)
    assert attempt(a)
    assert a.leading
    assert holder(api) == "a"
    spec = api.stored(*LEASE)["spec"]
    assert (spec["leaseDurationSeconds"], spec["leaseTransitions"]) == (15, 0)
    assert [verb for verb, _, _ in api.calls] == ["get", "create"]


def test_a_standby_waits_while_the_holder_renews() -> None:
    api, clock = FakeKubeAPI(), Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    assert attempt(a)
    for _ in range(20):
        clock.now += 2
        assert attempt(a), "the holder renews"
        assert not attempt(b), "a fresh lease is not taken"
    assert holder(api) == "a"
    assert not b.leading


def test_a_standby_takes_over_a_lease_not_renewed_for_its_duration_by_its_own_clock() -> None:
    api, clock = FakeKubeAPI(), Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    assert attempt(a)
    assert not attempt(b)  # b sees the record for the first time now
    clock.now += 14.9
    assert not attempt(b), "not yet expired as b has seen it"
    clock.now += 0.2
    assert attempt(b)
    assert holder(api) == "b"
    assert api.stored(*LEASE)["spec"]["leaseTransitions"] == 1
    assert not attempt(a), "the old holder sees it lost"
    assert not a.leading


def test_two_candidates_racing_for_an_expired_lease_cannot_both_win() -> None:
    api, clock = FakeKubeAPI(), Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    api.put(
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "marfleet", "namespace": "ops"},
            "spec": {"holderIdentity": "", "leaseDurationSeconds": 1},
        }
    )
    # both read the free lease, then both write: the second write carries a stale version
    stale = asyncio.run(api.get(Ref(*LEASE)))
    assert attempt(a)
    assert stale is not None
    stale["spec"]["holderIdentity"] = "b"
    try:
        asyncio.run(api.replace(stale))
    except ApiError as error:
        assert error.status == 409
    else:
        raise AssertionError("a stale write must be refused")
    assert not attempt(b), "b now sees a's fresh lease"
    assert holder(api) == "a"


def test_a_conflict_on_write_makes_the_candidate_a_standby() -> None:
    api, clock = FakeKubeAPI(), Clock()
    a = elector(api, "a", clock)
    assert attempt(a)

    async def conflicting(obj: Mapping[str, Any]) -> dict[str, Any]:
        raise ApiError(409, "Conflict", "the object has been modified")

    api.replace = conflicting  # type: ignore[method-assign]
    assert not attempt(a)
    assert not a.leading


def test_hold_returns_when_renewals_fail_past_the_deadline() -> None:
    api, clock = FakeKubeAPI(), Clock()
    a = elector(
        api, "a", clock, renew_seconds=0.001, renew_deadline_seconds=10.0, lease_seconds=15.0
    )
    assert attempt(a)

    async def unreachable(ref: Any, *, cached: bool = False) -> dict[str, Any] | None:
        clock.now += 3  # each failed attempt takes time
        raise ApiError(0, "ConnectionRefusedError", "no route")

    api.get = unreachable  # type: ignore[method-assign]

    async def scenario() -> None:
        await asyncio.wait_for(a.hold(), 5)

    asyncio.run(scenario())
    assert not a.leading
    assert clock.now - 1000.0 >= 10.0, "not before the renew deadline"


def test_release_hands_the_lease_over_at_once() -> None:
    api, clock = FakeKubeAPI(), Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    assert attempt(a)
    assert not attempt(b)
    asyncio.run(a.release())
    assert not a.leading
    assert holder(api) == ""
    assert attempt(b), "an empty holder is free to take, no waiting"
    assert holder(api) == "b"


def test_release_leaves_someone_elses_lease_alone() -> None:
    api, clock = FakeKubeAPI(), Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    assert attempt(a)
    assert not attempt(b)
    clock.now += 16  # a stopped renewing (paused, partitioned) and b took over
    assert attempt(b)
    writes = len(api.writes)
    asyncio.run(a.release())
    assert len(api.writes) == writes
    assert holder(api) == "b"


def test_acquire_waits_until_the_lease_is_free() -> None:
    api, clock = FakeKubeAPI(), Clock()
    a = elector(api, "a", clock)
    b = elector(api, "b", clock, retry_seconds=0.001)
    assert attempt(a)
    attempts = 0
    original = b.try_acquire_or_renew

    async def counting() -> bool:
        nonlocal attempts
        attempts += 1
        if attempts == 3:
            await a.release()
        return await original()

    b.try_acquire_or_renew = counting  # type: ignore[method-assign]

    async def scenario() -> None:
        await asyncio.wait_for(b.acquire(), 5)

    asyncio.run(scenario())
    assert attempts == 3
    assert holder(api) == "b"
