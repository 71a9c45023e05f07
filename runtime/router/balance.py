"""Smooth weighted round robin (the nginx algorithm) for spreading requests by weight.

Random choice with probabilities `w` is only right on average: over 1,000 requests a 10%
variant gets 100 ± 19 (two standard deviations). Smooth weighted round robin is deterministic:
each pick adds every weight to its variant's running credit, takes the variant with the most
credit and charges it the total. Every window of `sum(weights)` consecutive picks holds each
variant exactly `weight` times, interleaved rather than in runs, so any window of 1,000
requests is within a fraction of a point of the weights.

The same picker samples the mirrored share of traffic (`Sampler`): mirroring p% is a two-way
split between "copy" (p) and "don't" (100 - p).
"""

from __future__ import annotations

from collections.abc import Sequence


class SmoothWeighted:
    """Picks indices 0..n-1 in proportion to `weights` (non-negative integers, not all 0)."""

    __slots__ = ("_credit", "_total", "_weights")

    def __init__(self, weights: Sequence[int]) -> None:
        if any(w < 0 for w in weights):
            raise ValueError(f"weights must be >= 0, got {list(weights)}")
        self._weights = tuple(weights)
        self._total = sum(self._weights)
        if self._total == 0:
            raise ValueError("at least one weight must be above 0")
        self._credit = [0] * len(self._weights)

    def pick(self) -> int:
        credit = self._credit
        best = 0
        for index, weight in enumerate(self._weights):
            credit[index] += weight
            if credit[index] > credit[best]:
                best = index
        credit[best] -= self._total
        return best


class Sampler:
    """Says yes to exactly `percent` of calls, spread evenly (0: never, 100: always)."""

    __slots__ = ("_split",)

    def __init__(self, percent: int) -> None:
        if not 0 <= percent <= 100:
            raise ValueError(f"percent must be within 0..100, got {percent}")
        self._split = SmoothWeighted((percent, 100 - percent))

    def __call__(self) -> bool:
        return self._split.pick() == 0
