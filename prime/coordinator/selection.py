"""Trainer selection: who trains this round.

A seeded random sample of the live admitted trainers, ``participation_rate`` of
them but never fewer than ``min_clients``. Seeded by (job, round, attempt) so a
restarted coordinator makes the same choice for the same attempt.
"""

from __future__ import annotations

import hashlib
import math
import random


def select_trainers(
    live: list[bytes], *, participation_rate: float, min_clients: int, job_id: str, round_number: int, attempt: int,
    max_count: int | None = None,
) -> list[bytes]:
    """``max_count``: the most the strategy takes in a round (an in-memory strategy's cap)."""
    if len(live) < min_clients:
        return []
    count = min(len(live), max(min_clients, math.ceil(round(participation_rate * len(live), 9))))
    if max_count is not None:
        count = min(count, max_count)
    seed = hashlib.sha256(f"{job_id}/{round_number}/{attempt}".encode()).digest()
    return sorted(random.Random(seed).sample(sorted(live), count))
