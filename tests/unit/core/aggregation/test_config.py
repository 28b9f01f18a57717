"""Config models: discriminated union on ``name``, ranges, DP sub-model, build and checks."""

from __future__ import annotations

import tomllib
from enum import Enum

import pytest
from pydantic import TypeAdapter, ValidationError

from prime.core.aggregation import (
    AggregationConfig,
    Bulyan,
    CenteredClip,
    DPAdaptiveClipping,
    DPFixedClipping,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    KrumConfig,
    MultiKrum,
    build_strategy,
    check_min_clients,
    parse_aggregation,
    proximal_mu,
)

ADAPTER = TypeAdapter(AggregationConfig)

CLASSES = {
    "fedavg": FedAvg, "fedprox": FedProx, "fedavgm": FedAvgM, "fedadam": FedAdam, "fedyogi": FedYogi,
    "fedadagrad": FedAdagrad, "fedmedian": FedMedian, "fedtrimmedavg": FedTrimmedAvg, "krum": Krum,
    "multikrum": MultiKrum, "bulyan": Bulyan, "centeredclip": CenteredClip,
}


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_every_name_builds_its_strategy_with_defaults(name: str) -> None:
    strategy = build_strategy({"name": name})
    assert type(strategy) is CLASSES[name] and strategy.name == name
    assert build_strategy(name) is not strategy


def test_toml_examples() -> None:
    doc = tomllib.loads("""
[a]
name = "fedadam"
eta = 0.03
beta_1 = 0.9
beta_2 = 0.999
tau = 1e-4

[b]
name = "krum"
num_malicious = 2
max_updates = 32

[b.dp]
clipping = "adaptive"
clip_norm = 0.5
noise_multiplier = 0.8
target_quantile = 0.5
seed = 1234
""")
    adam = parse_aggregation(doc["a"])
    strategy = build_strategy(adam)
    assert isinstance(strategy, FedAdam) and strategy.optimizer.eta == 0.03 and strategy.optimizer.tau == 1e-4
    krum = parse_aggregation(doc["b"])
    assert isinstance(krum, KrumConfig) and krum.dp is not None and krum.dp.clipping == "adaptive"
    wrapped = build_strategy(krum)
    assert isinstance(wrapped, DPAdaptiveClipping) and wrapped.label == "dp-adaptive(krum)"
    assert wrapped.max_updates == 32 and not wrapped.streaming
    fixed = build_strategy({"name": "fedavg", "dp": {"clip_norm": 1.0, "noise_multiplier": 1.1}})
    assert isinstance(fixed, DPFixedClipping) and fixed.streaming


@pytest.mark.parametrize("data, where", [
    ({"name": "fedtrimmedavg", "beta": 0.5}, "beta"),
    ({"name": "fedtrimmedavg", "beta": -0.1}, "beta"),
    ({"name": "krum", "num_malicious": -1}, "num_malicious"),
    ({"name": "multikrum", "num_selected": 0}, "num_selected"),
    ({"name": "centeredclip", "tau": 0}, "tau"),
    ({"name": "centeredclip", "iterations": 0}, "iterations"),
    ({"name": "centeredclip", "init": "zero"}, "init"),
    ({"name": "fedadam", "eta": 0}, "eta"),
    ({"name": "fedadam", "beta_2": 1.0}, "beta_2"),
    ({"name": "fedavgm", "server_momentum": 1.0}, "server_momentum"),
    ({"name": "fedavgm", "server_learning_rate": -1}, "server_learning_rate"),
    ({"name": "fedavgm", "server_momentum": 0.0, "nesterov": True}, "nesterov"),
    ({"name": "fedprox", "proximal_mu": -1}, "proximal_mu"),
    ({"name": "fedmedian", "max_updates": 0}, "max_updates"),
    ({"name": "fedavg", "max_updates": 4}, "max_updates"),  # streaming: no such key
    ({"name": "fedavg", "eta": 0.1}, "eta"),
    ({"name": "fedmedian", "dp": {"clip_norm": 0, "noise_multiplier": 1}}, "clip_norm"),
    ({"name": "fedavg", "dp": {"clip_norm": 1, "noise_multiplier": -1}}, "noise_multiplier"),
    ({"name": "fedavg", "dp": {"clip_norm": 1, "noise_multiplier": 1, "target_quantile": 0.5}}, "adaptive"),
    ({"name": "fedavg", "dp": {"clipping": "adaptive", "clip_norm": 1, "noise_multiplier": 1,
                               "clipped_count_stddev": 0.4}}, "clipped_count_stddev"),
    ({"name": "fedavg", "dp": {"clipping": "laplace", "clip_norm": 1, "noise_multiplier": 1}}, "clipping"),
    ({"name": "scaffold"}, "name"),
])
def test_invalid_configs_name_the_field(data: dict, where: str) -> None:
    with pytest.raises(ValidationError, match=where):
        ADAPTER.validate_python(data)
    with pytest.raises(ValueError):
        build_strategy(data)


def test_models_are_frozen() -> None:
    c = parse_aggregation({"name": "krum"})
    with pytest.raises(ValidationError):
        c.num_malicious = 3  # type: ignore[misc]


def test_legacy_enum_and_names() -> None:
    class AggregationStrategy(str, Enum):  # stands in for the old prime.core.config enum
        FEDAVG = "fedavg"

    assert type(build_strategy(AggregationStrategy.FEDAVG)) is FedAvg
    assert type(build_strategy("fedavg")) is FedAvg
    with pytest.raises(ValueError):
        build_strategy("nope")


def test_proximal_mu_for_the_trainer() -> None:
    assert proximal_mu({"name": "fedprox", "proximal_mu": 0.25}) == 0.25
    assert build_strategy({"name": "fedprox", "proximal_mu": 0.25}).proximal_mu == 0.25
    assert proximal_mu({"name": "fedadam"}) == 0.0


@pytest.mark.parametrize("data, min_clients, message", [
    ({"name": "krum", "num_malicious": 2}, 5,
     "krum needs more than 2f+2 = 6 updates per round; federated.min_clients is 5"),
    ({"name": "multikrum", "num_malicious": 1, "num_selected": 8}, 6,
     "multikrum needs at least num_selected = 8 updates per round; federated.min_clients is 6"),
    ({"name": "bulyan", "num_malicious": 1}, 6,
     "bulyan needs at least 4f+3 = 7 updates per round; federated.min_clients is 6"),
    ({"name": "fedmedian", "max_updates": 4}, 5,
     "fedmedian holds at most max_updates = 4 updates per round in memory; federated.min_clients is 5"),
    ({"name": "fedavg", "dp": {"clipping": "adaptive", "clip_norm": 1, "noise_multiplier": 1.0}}, 8,
     "fedavg needs more than 10·dp.noise_multiplier = 10"),
])
def test_check_min_clients_names_the_parameter(data: dict, min_clients: int, message: str) -> None:
    with pytest.raises(ValueError) as err:
        check_min_clients(data, min_clients)
    assert message in str(err.value)


@pytest.mark.parametrize("data, min_clients", [
    ({"name": "krum", "num_malicious": 2}, 7),
    ({"name": "bulyan", "num_malicious": 1}, 7),
    ({"name": "fedtrimmedavg", "beta": 0.45}, 1),
    ({"name": "fedavg"}, 1),
    ({"name": "fedavg", "dp": {"clipping": "adaptive", "clip_norm": 1, "noise_multiplier": 1.0}}, 11),
    ({"name": "fedavg", "dp": {"clipping": "adaptive", "clip_norm": 1, "noise_multiplier": 1.0,
                               "clipped_count_stddev": 1.0}}, 2),
])
def test_check_min_clients_passes(data: dict, min_clients: int) -> None:
    check_min_clients(data, min_clients)
