"""The operator bench's follower: it records when each InferenceService of a run first meets
a predicate, and gives up on a run whose objects its watch never sees instead of waiting the
whole phase timeout (its watch is not started here: the events are fed as the watch would);
and the bench reports the one- and two-variant InferenceServices' times apart."""

from __future__ import annotations

import threading
import time

import pytest

from e2e.bench.operator_scale import Follower, by_shape, manifests, ready_now


def ready(name: str, generation: int = 1) -> dict:
    return {
        "metadata": {"name": name, "generation": generation},
        "status": {
            "observedGeneration": generation,
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def feed(follower: Follower, obj: dict, after: float) -> threading.Thread:
    def later() -> None:
        time.sleep(after)
        follower.observe("MODIFIED", obj)

    thread = threading.Thread(target=later)
    thread.start()
    return thread


def test_a_run_whose_objects_the_watch_never_sees_fails_early() -> None:
    follower = Follower(None, "bench-x")  # type: ignore[arg-type]  # no watch started
    follower.expect(ready_now)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="saw none of run bench-x's InferenceServices"):
        follower.wait({"isvc-0000"}, timeout=30, unseen=0.3)
    assert time.monotonic() - started < 5


def test_objects_seen_late_are_waited_for_until_ready() -> None:
    follower = Follower(None, "bench-x")  # type: ignore[arg-type]
    follower.expect(ready_now)
    seen = feed(follower, {"metadata": {"name": "isvc-0000", "generation": 1}}, 0.1)
    became_ready = feed(follower, ready("isvc-0000"), 0.6)
    reached = follower.wait({"isvc-0000"}, timeout=10, unseen=0.3)
    seen.join()
    became_ready.join()
    assert list(reached) == ["isvc-0000"] and reached["isvc-0000"] >= 0.5


def test_apply_to_ready_is_reported_per_shape_of_the_ones_ready() -> None:
    objects = manifests(6, "bench-x", ["bench-x"], multi_every=3)  # 0 and 3 have two variants
    ready_at = {"isvc-0000": 9.0, "isvc-0001": 2.0, "isvc-0002": 4.0, "isvc-0003": 7.0}
    shapes = by_shape(objects, ready_at)
    assert shapes == {
        "1 variants": {"p50": 3.0, "p99": 4.0, "max": 4.0},
        "2 variants": {"p50": 8.0, "p99": 9.0, "max": 9.0},
    }
