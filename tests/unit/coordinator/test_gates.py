"""Gates: parsed from the job config, checked against the task's metrics, evaluated per stage."""

from __future__ import annotations

import pytest

from prime.coordinator.gates import auto_stage, check_gate_metrics, evaluate_gates, gates_to_enter
from prime.core.config import parse_config
from prime.core.errors import ConfigError


def _gates(**tables):
    return parse_config({"gates": tables}, "job.toml").gates


def test_bad_gate_keys_and_thresholds_name_the_key_and_file():
    with pytest.raises(ConfigError, match=r"job.toml: key 'gates.staging'.*write min_<metric> or max_<metric>"):
        _gates(staging={"accuracy": 0.9})
    with pytest.raises(ConfigError, match="finite"):
        _gates(production={"max_loss": float("inf")})
    with pytest.raises(ConfigError, match="unknown key 'gates.canary'"):
        _gates(canary={"min_accuracy": 0.5})


def test_a_gate_on_a_metric_the_task_does_not_report_is_a_config_error():
    gates = _gates(staging={"min_accuracy": 0.9}, production={"max_bits_per_byte": 2.0})
    check_gate_metrics(gates, "stdlib-lm", ("bits_per_byte", "loss", "perplexity", "accuracy"), "job.toml")
    with pytest.raises(ConfigError) as err:
        check_gate_metrics(gates, "digits", ("accuracy", "loss"), "job.toml")
    assert str(err.value) == ("job.toml: key 'gates.production.max_bits_per_byte': task 'digits' reports no metric "
                              "'bits_per_byte'; it reports accuracy, loss (write min_<metric> or max_<metric>)")


def test_evaluation_is_cumulative_and_an_unmeasured_metric_fails():
    gates = _gates(staging={"min_accuracy": 0.9}, production={"max_loss": 0.2})
    assert [g.key for g in gates_to_enter(gates, "production")] == ["min_accuracy", "max_loss"]
    assert gates_to_enter(gates, "archived") == []
    assert evaluate_gates(gates, "staging", {"accuracy": 0.9}).passed  # bounds are inclusive
    result = evaluate_gates(gates, "production", {"accuracy": 0.95})
    assert not result.passed and result.explain() == ("min_accuracy 0.9: 0.95 passes; "
                                                       "max_loss 0.2: not measured FAILS")
    assert not evaluate_gates(gates, "staging", {"accuracy": float("nan")}).passed


def test_auto_stage_is_the_highest_stage_with_gates_of_its_own_that_passes():
    both = _gates(staging={"min_accuracy": 0.9}, production={"max_loss": 0.2})
    assert auto_stage(both, {"accuracy": 0.95, "loss": 0.1})[0] == "production"
    assert auto_stage(both, {"accuracy": 0.95, "loss": 0.3})[0] == "staging"
    assert auto_stage(both, {"accuracy": 0.85, "loss": 0.1}) == ("training", None)  # staging gates bar the way
    assert auto_stage(_gates(), {"accuracy": 1.0}) == ("training", None)  # no gates: promotion is by hand
    assert auto_stage({"staging": {"max_loss": 0.5}}, {"loss": 0.4})[0] == "staging"  # gates as stored
