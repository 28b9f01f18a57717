"""DiLoCo's outer optimizer after any aggregator: config, composition, server state.

(The contract suite, ``test_contract.py``, runs the outer cases against float64 references.)"""

from __future__ import annotations

import tomllib

import pytest
import torch

from prime.core.aggregation import (
    SGD,
    Contribution,
    DPFixedClipping,
    FedAvgM,
    FedTrimmedAvg,
    OuterOptimized,
    build_strategy,
    check_min_clients,
    proximal_mu,
)
from prime.core.aggregation.outer import DILOCO_LEARNING_RATE, DILOCO_MOMENTUM
from prime.core.config import OptimizerName, parse_config
from prime.core.errors import ConfigError
from tests.unit.core.aggregation.helpers import key, run_round, tensors


def job(aggregation: dict, **sections) -> dict:
    return {"federated": {"aggregation": aggregation}, **sections}


def test_the_diloco_shorthand_is_the_published_outer_optimizer() -> None:
    doc = tomllib.loads("""
[federated.aggregation]
name = "fedtrimmedavg"
beta = 0.2
outer = "diloco"
""")
    config = parse_config(doc, "job.toml")
    outer = config.federated.aggregation.outer
    assert (outer.name, outer.learning_rate, outer.momentum, outer.nesterov) == ("sgd", 0.7, 0.9, True)
    assert (DILOCO_LEARNING_RATE, DILOCO_MOMENTUM) == (0.7, 0.9)
    strategy = build_strategy(config.federated.aggregation)
    assert isinstance(strategy, OuterOptimized) and strategy.label == "fedtrimmedavg+outer-sgd"
    assert isinstance(strategy.optimizer, SGD)
    assert (strategy.optimizer.lr, strategy.optimizer.momentum, strategy.optimizer.nesterov) == (0.7, 0.9, True)
    assert not strategy.streaming and strategy.max_updates == 64


def test_an_outer_table_sets_each_parameter() -> None:
    config = parse_config({"federated": {"min_clients": 5, "aggregation": {
        "name": "krum", "num_malicious": 1, "outer": {"learning_rate": 0.5, "momentum": 0.8, "nesterov": False}}}})
    strategy = build_strategy(config.federated.aggregation)
    assert strategy.label == "krum+outer-sgd" and strategy.requirement().minimum == 5
    assert (strategy.optimizer.lr, strategy.optimizer.momentum, strategy.optimizer.nesterov) == (0.5, 0.8, False)


def test_with_an_outer_optimizer_the_inner_one_defaults_to_adamw() -> None:
    diloco = parse_config(job({"name": "fedavg", "outer": "diloco"}))
    assert diloco.training.optimizer.name is OptimizerName.ADAMW
    named = parse_config(job({"name": "fedavg", "outer": "diloco"}, training={"optimizer": {"name": "sgd"}}))
    assert named.training.optimizer.name is OptimizerName.SGD
    assert parse_config(job({"name": "fedavg"})).training.optimizer.name is OptimizerName.SGD


@pytest.mark.parametrize("aggregation, message", [
    ({"name": "fedavgm", "outer": "diloco"}, "fedavgm already applies its own server optimizer"),
    ({"name": "fedadam", "outer": {}}, "fedadam already applies its own server optimizer"),
    ({"name": "fedyogi", "outer": "diloco"}, "fedyogi already applies its own server optimizer"),
    ({"name": "fedadagrad", "outer": "diloco"}, "fedadagrad already applies its own server optimizer"),
    ({"name": "fedavg", "outer": "nesterov"}, "'nesterov' is not a preset"),
    ({"name": "fedavg", "outer": {"momentum": 0.0}}, "outer.nesterov needs outer.momentum > 0"),
    ({"name": "fedavg", "outer": {"learning_rate": 0}}, "greater than 0"),
    ({"name": "fedavg", "outer": {"momentum": 1.0}}, "less than 1"),
])
def test_nonsense_is_refused_naming_the_key(aggregation: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(job(aggregation), "job.toml")
    text = str(err.value)
    assert "job.toml: key 'federated.aggregation.outer" in text and message in text, text


def test_an_unknown_outer_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'federated.aggregation.outer.lr'"):
        parse_config(job({"name": "fedavg", "outer": {"lr": 0.7}}), "job.toml")


def test_fedavg_with_the_diloco_outer_step_is_fedavgm_with_nesterov() -> None:
    outer, fedavgm = build_strategy({"name": "fedavg", "outer": "diloco"}), FedAvgM(0.7, 0.9, nesterov=True)
    a = b = tensors(0)
    for r in range(4):
        contribs = [Contribution(key(i), tensors(10 * r + i, 0.2), 3 + i) for i in range(3)]
        a, b = run_round(outer, a, contribs).state, run_round(fedavgm, b, contribs).state
        for name in a:
            assert torch.equal(a[name], b[name]), (r, name)


def test_the_outer_state_round_trips_and_refuses_a_bare_strategys() -> None:
    make = lambda: build_strategy({"name": "fedtrimmedavg", "beta": 0.2, "outer": "diloco"})  # noqa: E731
    first, glob = make(), tensors(0)
    for r in range(2):
        glob = run_round(first, glob, [Contribution(key(i), tensors(r * 7 + i, 0.3), 1) for i in range(5)]).state
    state = first.state_dict()
    assert int(state["optimizer.step"]) == 2 and any(k.startswith("optimizer.momentum.") for k in state)
    second = make()
    second.load_state_dict(state)
    contribs = [Contribution(key(i), tensors(50 + i, 0.3), 1) for i in range(5)]
    x, y = run_round(first, glob, contribs).state, run_round(second, glob, contribs).state
    assert all(torch.equal(x[k], y[k]) for k in x)
    with pytest.raises(ValueError, match="not 'fedtrimmedavg'"):
        FedTrimmedAvg(0.2).load_state_dict(state)


def test_dp_and_fedprox_compose_with_an_outer_optimizer() -> None:
    dp = build_strategy({"name": "fedtrimmedavg", "outer": "diloco",
                         "dp": {"clip_norm": 1.0, "noise_multiplier": 0.1, "seed": 3}})
    assert isinstance(dp, DPFixedClipping) and dp.label == "dp-fixed(fedtrimmedavg+outer-sgd)"
    assert isinstance(dp.optimizer, SGD) and dp.optimizer.nesterov
    assert proximal_mu({"name": "fedprox", "proximal_mu": 0.05, "outer": "diloco"}) == 0.05
    assert build_strategy({"name": "fedprox", "proximal_mu": 0.05, "outer": "diloco"}).proximal_mu == 0.05
    check_min_clients({"name": "bulyan", "num_malicious": 1, "outer": "diloco"}, 7)
    with pytest.raises(ValueError, match="bulyan needs"):
        check_min_clients({"name": "bulyan", "num_malicious": 1, "outer": "diloco"}, 6)


def test_a_strategy_with_its_own_optimizer_cannot_be_wrapped() -> None:
    with pytest.raises(ValueError, match="has its own server optimizer"):
        OuterOptimized(FedAvgM(), SGD(0.7, 0.9, True))
