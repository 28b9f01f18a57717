"""Budget arithmetic: limits, prices, the device-time cap, thresholds crossed once, limits reached."""

from __future__ import annotations

import pytest

from prime.core.budget import (
    BudgetConfig,
    Spend,
    UpdateSpend,
    capped_device_seconds,
    crossings,
    describe,
    reached,
    round_spend,
)
from prime.core.config import parse_config
from prime.core.errors import ConfigError


def test_config_errors_name_the_key_and_the_file():
    with pytest.raises(ConfigError, match=r"job.toml: key 'budget'.*budget.cost needs \[budget.prices\]"):
        parse_config({"budget": {"cost": 5.0}}, "job.toml")
    with pytest.raises(ConfigError, match=r"job.toml: key 'budget.notify_at'"):
        parse_config({"budget": {"notify_at": 0}}, "job.toml")
    with pytest.raises(ConfigError, match=r"job.toml: key 'budget.prices'.*cpu"):
        parse_config({"budget": {"prices": {"cpu": -1.0}}}, "job.toml")
    with pytest.raises(ConfigError, match=r"unknown key 'budget.round'"):
        parse_config({"budget": {"round": 2}}, "job.toml")
    assert parse_config({}, "job.toml").budget.limits() == {}


def test_unlisted_device_kinds_pay_the_highest_price():
    config = BudgetConfig(cost=10.0, prices={"cpu": 0.5, "nvidia-h200": 4.0})
    assert config.price("cpu") == 0.5 and config.price("nvidia-h200") == 4.0 and config.price("made-up") == 4.0


def test_device_time_is_capped_at_the_round_wall_time_on_every_device():
    assert capped_device_seconds(3.0, 1, 10.0) == (3.0, False)
    assert capped_device_seconds(50.0, 4, 10.0) == (40.0, True)
    assert capped_device_seconds(None, 2, 10.0) == (20.0, False)  # unreported: the most it can have been
    assert capped_device_seconds(float("inf"), 1, 10.0) == (10.0, False)


def test_round_spend_sums_device_time_and_prices_it_by_kind():
    config = BudgetConfig(cost=10.0, prices={"cpu": 1.0, "nvidia-h200": 4.0})
    spend = round_spend([UpdateSpend(3600.0, "cpu", 10), UpdateSpend(1800.0, "nvidia-h200", 30)], 12.0, config)
    assert spend == Spend(rounds=1, wall_seconds=12.0, device_seconds=5400.0, cost=3.0, peak_memory_bytes=30)
    total = Spend(2, 20.0, 100.0, 1.0, 50).plus(spend)
    assert total == Spend(3, 32.0, 5500.0, 4.0, 50)


def test_limits_are_reached_at_equality_and_only_cumulative_ones_stop():
    config = BudgetConfig(rounds=3, device_hours=1.0, memory_bytes_per_trainer=10)
    assert reached(config, Spend(2, device_seconds=3599.0, peak_memory_bytes=99)) == []
    assert reached(config, Spend(3, device_seconds=3600.0)) == [("rounds", 3.0, 3.0), ("device_hours", 1.0, 1.0)]
    assert Spend(3, 1.0, 7200.0, 0.0, 4).against(config) == {
        "rounds": (3.0, 3.0), "device_hours": (2.0, 1.0), "memory_bytes_per_trainer": (4.0, 10.0)}


def test_a_threshold_is_crossed_once():
    config = BudgetConfig(rounds=10, wall_seconds=100.0, notify_at=0.8)
    history = [Spend(r, 10.0 * r) for r in range(11)]
    crossed = [(after.rounds, [c[0] for c in crossings(config, before, after)])
               for before, after in zip(history, history[1:])]
    assert [c for c in crossed if c[1]] == [(8, ["wall_seconds", "rounds"])]
    assert crossings(config, Spend(0), Spend(10, 100.0)) == [("wall_seconds", 100.0, 100.0), ("rounds", 10.0, 10.0)]


def test_describe():
    assert describe("rounds", 2, 2) == "rounds 2 of 2 (100%)"
    assert describe("device_hours", 0.012, 0.015) == "device_hours 0.012 of 0.015 (80%)"
