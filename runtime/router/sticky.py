"""Sticky assignment of keys (a user id, a session) to variants: weighted rendezvous hashing.

Every variant draws a pseudo-random number from hash(variant, key); the key goes to the variant
with the smallest `-ln(u) / weight`, a race of exponential clocks whose winner is variant `i`
with probability `weight_i / sum(weights)`. Why this scheme:

- it is stateless: every router replica, and a restarted one, sends a key to the same variant;
- it depends on variant names, not on their order in the spec;
- raising one weight only moves keys *to* that variant, lowering one only moves keys *away*
  from it, so moving weight between two variants (a canary step) moves exactly the share it
  must and nothing else.

With three or more variants a transfer between two of them also reshuffles a few keys of the
others; no stateless scheme can avoid that for every possible change (the prefixes of fixed
per-variant key orders would have to tile the key space for every weight vector, which is
impossible beyond two variants).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from hashlib import blake2b

_SCALE = 2.0**-64


class Rendezvous:
    """Maps keys to indices 0..n-1 in proportion to `weights`, moving as few keys as it can."""

    __slots__ = ("_candidates",)

    def __init__(self, names: Sequence[str], weights: Sequence[int]) -> None:
        if len(names) != len(weights):
            raise ValueError(f"{len(names)} names but {len(weights)} weights")
        self._candidates = [
            (index, blake2b(name.encode() + b"\0", digest_size=8), weight)
            for index, (name, weight) in enumerate(zip(names, weights, strict=True))
            if weight > 0
        ]
        if not self._candidates:
            raise ValueError("at least one weight must be above 0")

    def pick(self, key: str) -> int:
        data = key.encode()
        best_index, best_score = -1, math.inf
        for index, seed, weight in self._candidates:
            digest = seed.copy()
            digest.update(data)
            uniform = (int.from_bytes(digest.digest(), "little") + 0.5) * _SCALE
            score = -math.log(uniform) / weight
            if score < best_score:
                best_index, best_score = index, score
        return best_index
