"""How the router spreads and pins requests: smooth weighted round robin and rendezvous hashing."""

from __future__ import annotations

from collections import Counter

import pytest
from marfleet.runtime.router.balance import Sampler, SmoothWeighted
from marfleet.runtime.router.sticky import Rendezvous


def worst_window_error(picks: list[int], weights: list[int], window: int) -> float:
    """Largest |share - weight| in percentage points over every window of `window` picks."""
    total = sum(weights)
    counts = Counter(picks[:window])
    worst = 0.0
    for start in range(len(picks) - window + 1):
        if start:
            counts[picks[start - 1]] -= 1
            counts[picks[start + window - 1]] += 1
        for index, weight in enumerate(weights):
            worst = max(worst, abs(100 * counts[index] / window - 100 * weight / total))
    return worst


@pytest.mark.parametrize(
    "weights", [[90, 10], [50, 50], [99, 1], [1, 99], [34, 33, 33], [70, 0, 30], [5, 15, 30, 50]]
)
def test_every_1000_consecutive_picks_are_within_a_point(weights: list[int]) -> None:
    picker = SmoothWeighted(weights)
    picks = [picker.pick() for _ in range(5_000)]
    assert worst_window_error(picks, weights, 1_000) <= 1.0


def test_each_cycle_of_the_total_holds_every_weight_exactly() -> None:
    picker = SmoothWeighted([7, 2, 1])
    for _ in range(3):
        assert Counter(picker.pick() for _ in range(10)) == {0: 7, 1: 2, 2: 1}


def test_picks_are_interleaved_not_in_runs() -> None:
    picker = SmoothWeighted([50, 50])
    assert [picker.pick() for _ in range(6)] == [0, 1, 0, 1, 0, 1]


def test_weight_zero_is_never_picked_and_all_zero_is_refused() -> None:
    picker = SmoothWeighted([0, 100])
    assert {picker.pick() for _ in range(200)} == {1}
    with pytest.raises(ValueError, match="at least one weight"):
        SmoothWeighted([0, 0])
    with pytest.raises(ValueError, match=">= 0"):
        SmoothWeighted([-1, 101])


@pytest.mark.parametrize("percent", [0, 1, 10, 50, 100])
def test_sampler_says_yes_to_exactly_its_percent(percent: int) -> None:
    sample = Sampler(percent)
    assert sum(sample() for _ in range(1_000)) == 10 * percent


KEYS = [f"user-{n}" for n in range(10_000)]


def assignment(names: list[str], weights: list[int]) -> list[str]:
    rendezvous = Rendezvous(names, weights)
    return [names[rendezvous.pick(key)] for key in KEYS]


def test_sticky_shares_follow_the_weights() -> None:
    shares = Counter(assignment(["stable", "canary"], [90, 10]))
    assert abs(shares["canary"] / len(KEYS) - 0.10) < 0.01


def test_sticky_keys_stay_put_while_weights_are_unchanged() -> None:
    assert assignment(["stable", "canary"], [90, 10]) == assignment(["stable", "canary"], [90, 10])


def test_sticky_ignores_the_order_of_variants() -> None:
    forward = assignment(["stable", "canary"], [80, 20])
    assert forward == assignment(["canary", "stable"], [20, 80])


@pytest.mark.parametrize(("before", "after"), [(90, 80), (80, 50), (50, 99), (10, 0)])
def test_a_weight_change_between_two_variants_moves_only_the_keys_it_must(
    before: int, after: int
) -> None:
    old = assignment(["stable", "canary"], [before, 100 - before])
    new = assignment(["stable", "canary"], [after, 100 - after])
    moved = [(a, b) for a, b in zip(old, new, strict=True) if a != b]
    # Only one direction: from the variant that lost weight to the one that gained it.
    assert len(set(moved)) <= 1
    assert abs(len(moved) / len(KEYS) - abs(before - after) / 100) < 0.01


def test_raising_one_of_three_weights_only_pulls_keys_to_it() -> None:
    names = ["a", "b", "c"]
    old = assignment(names, [50, 30, 20])
    new = assignment(names, [50, 30, 40])  # c doubled: 20/100 -> 40/120
    assert {after for before, after in zip(old, new, strict=True) if before != after} == {"c"}


def test_sticky_needs_a_live_variant() -> None:
    with pytest.raises(ValueError, match="at least one weight"):
        Rendezvous(["a", "b"], [0, 0])
    assert set(assignment(["a", "b"], [0, 100])) == {"b"}
