"""Trainer selection: count rule, determinism per (job, round, attempt), minimum live."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from prime.coordinator.selection import select_trainers

LIVE = [bytes([i]) * 32 for i in range(1, 21)]


def select(live=LIVE, rate=1.0, min_clients=1, job="job", rnd=1, attempt=0):
    return select_trainers(live, participation_rate=rate, min_clients=min_clients, job_id=job,
                           round_number=rnd, attempt=attempt)


@pytest.mark.parametrize(
    "n, rate, min_clients",
    [(20, 1.0, 2), (20, 0.5, 2), (20, 0.5, 15), (20, 0.01, 1), (20, 0.01, 3), (7, 0.3, 1), (3, 0.1, 3),
     (10, 0.25, 2), (1, 1.0, 1)],
)
def test_count_rule(n, rate, min_clients):
    chosen = select(LIVE[:n], rate, min_clients)
    expected = min(n, max(min_clients, math.ceil(Fraction(str(rate)) * n)))
    assert len(chosen) == expected
    assert len(set(chosen)) == len(chosen)
    assert set(chosen) <= set(LIVE[:n])
    assert chosen == sorted(chosen)


@pytest.mark.parametrize("rate, n, expected", [(0.14, 50, 7), (0.7, 10, 7), (0.5, 9, 5)])
def test_count_is_exact_for_decimal_rates(rate, n, expected):
    """14% of 50 trainers is 7, not 8 (0.14 * 50 == 7.000000000000001 in floating point)."""
    live = [i.to_bytes(4, "big") for i in range(n)]
    assert len(select(live, rate, 1)) == expected


def test_fewer_live_than_min_clients_selects_nobody():
    assert select(LIVE[:2], 1.0, 3) == []
    assert select([], 1.0, 1) == []
    assert len(select(LIVE[:3], 0.1, 3)) == 3


def test_deterministic_per_job_round_attempt():
    a = select(rate=0.3)
    assert select(rate=0.3) == a
    # the order live trainers are listed in does not matter
    assert select(list(reversed(LIVE)), rate=0.3) == a
    variants = {tuple(select(rate=0.3, rnd=r, attempt=t, job=j))
                for r in (1, 2, 3) for t in (0, 1) for j in ("job", "other")}
    assert len(variants) > 6  # different (job, round, attempt) give different choices


def test_everyone_gets_picked_eventually():
    seen = set()
    for r in range(1, 40):
        seen.update(select(rate=0.25, rnd=r))
    assert seen == set(LIVE)


def test_never_more_than_an_in_memory_strategy_holds():
    live = [bytes([i]) * 32 for i in range(10)]
    chosen = select_trainers(live, participation_rate=1.0, min_clients=2, job_id="j", round_number=1, attempt=1,
                             max_count=4)
    assert len(chosen) == 4 and set(chosen) <= set(live)
