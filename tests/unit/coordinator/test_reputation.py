"""Reputation: penalized refusals and harm lower it, good work restores it, exclusion doubles on repeat."""

from __future__ import annotations

import pytest

from prime.coordinator.reputation import RoundConduct, Standing, next_standing
from prime.core.config import ReputationConfig

CONFIG = ReputationConfig(threshold=0.3, refusal_penalty=0.3, harm_penalty=0.5, recovery=0.1, exclusion_rounds=2)


def conduct(*reasons: str, credited: bool = False) -> RoundConduct:
    c = RoundConduct(credited=credited)
    for reason in reasons:
        c.note_refusal(reason)
    return c


def test_good_work_recovers_up_to_one():
    assert next_standing(Standing(0.5), conduct(credited=True), 4, CONFIG).score == pytest.approx(0.6)
    assert next_standing(Standing(0.95), conduct(credited=True), 4, CONFIG).score == 1.0


def test_timing_refusals_cost_nothing_penalized_ones_do():
    assert conduct("wrong_round", "expired", "replay", "tampered_blob").refusals == set()
    assert next_standing(Standing(), conduct("wrong_round"), 4, CONFIG) == Standing()
    assert next_standing(Standing(), conduct("norm_too_large"), 4, CONFIG).score == pytest.approx(0.7)
    assert next_standing(Standing(), conduct("norm_too_large", "wrong_shape"), 4, CONFIG).score == pytest.approx(0.4)
    harmed = conduct("harmful")
    assert harmed.harmful and next_standing(Standing(), harmed, 4, CONFIG).score == pytest.approx(0.5)


def test_falling_below_the_threshold_excludes_for_longer_each_time():
    first = next_standing(Standing(0.4), conduct("harmful"), 5, CONFIG)
    assert first == Standing(0.3, 1, 7) and first.excluded(6) and first.excluded(7) and not first.excluded(8)
    while_excluded = next_standing(first, conduct("harmful"), 6, CONFIG)
    assert while_excluded.strikes == 1 and while_excluded.excluded_until == 7  # no new strike while out
    back = next_standing(Standing(0.3, 1, 7), conduct("copied_update"), 9, CONFIG)
    assert back == Standing(0.3, 2, 13)  # 2 rounds doubled to 4
    assert next_standing(Standing(0.3, 2, 13), conduct("harmful"), 20, CONFIG).excluded_until == 28


def test_a_credited_round_with_a_refusal_does_not_recover():
    assert next_standing(Standing(0.8), conduct("wrong_shard", credited=True), 3, CONFIG).score == pytest.approx(0.5)
