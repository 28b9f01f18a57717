"""Reward policy: split a round's fixed pool among contributors, exactly.

Amounts are integer micro-tokens so a round never pays out more (or less) than its
pool through rounding: the largest-remainder method hands out the leftovers.
"""

from __future__ import annotations

from fractions import Fraction

MICRO = 1_000_000


def to_micro(tokens: float) -> int:
    return int(round(tokens * MICRO))


def split_pool(pool_micro: int, weights: dict[bytes, float]) -> dict[bytes, int]:
    """Split ``pool_micro`` proportionally to ``weights``; the parts sum to the pool exactly."""
    positive = {k: Fraction(w) for k, w in weights.items() if w > 0}
    total = sum(positive.values())
    if pool_micro <= 0 or total <= 0:
        return {}
    exact = {k: pool_micro * w / total for k, w in positive.items()}  # exact rationals: no float drift
    shares = {k: int(v) for k, v in exact.items()}
    leftover = pool_micro - sum(shares.values())
    for key in sorted(exact, key=lambda k: (exact[k] - shares[k], k), reverse=True)[:leftover]:
        shares[key] += 1
    return shares
