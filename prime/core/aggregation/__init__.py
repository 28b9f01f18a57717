"""Aggregation strategies: pure functions of updates and server state, no sockets, no disk.

Each strategy is an aggregator (the round's deltas → one aggregate delta) composed with
a server optimizer (``optimizers.py``), one file per named strategy; ``outer.py`` puts an
outer optimizer (DiLoCo's) after any aggregator that applies its aggregate as is; ``dp.py``
wraps any of them in central DP; ``config.py`` holds their pydantic models and ``build_strategy``.
"""

from prime.core.aggregation.base import (
    Aggregate,
    Aggregator,
    Contribution,
    Requirement,
    RoundResult,
    ServerOptimizer,
    StateDict,
    Strategy,
)
from prime.core.aggregation.bulyan import Bulyan
from prime.core.aggregation.centeredclip import CenteredClip
from prime.core.aggregation.composed import ComposedStrategy
from prime.core.aggregation.config import (
    AggregationConfig,
    BulyanConfig,
    CenteredClipConfig,
    DPConfig,
    FedAdagradConfig,
    FedAdamConfig,
    FedAvgConfig,
    FedAvgMConfig,
    FedMedianConfig,
    FedProxConfig,
    FedTrimmedAvgConfig,
    FedYogiConfig,
    KrumConfig,
    MultiKrumConfig,
    OuterConfig,
    build_strategy,
    check_min_clients,
    parse_aggregation,
    proximal_mu,
)
from prime.core.aggregation.dp import DPAdaptiveClipping, DPFixedClipping
from prime.core.aggregation.fedadagrad import FedAdagrad
from prime.core.aggregation.fedadam import FedAdam
from prime.core.aggregation.fedavg import FedAvg
from prime.core.aggregation.fedavgm import FedAvgM
from prime.core.aggregation.fedmedian import FedMedian
from prime.core.aggregation.fedprox import FedProx
from prime.core.aggregation.fedtrimmedavg import FedTrimmedAvg
from prime.core.aggregation.fedyogi import FedYogi
from prime.core.aggregation.krum import Krum, MultiKrum
from prime.core.aggregation.optimizers import SGD, Adagrad, Adam, Yogi
from prime.core.aggregation.outer import OuterOptimized

__all__ = [
    "SGD", "Adagrad", "Adam", "Aggregate", "AggregationConfig", "Aggregator", "Bulyan", "BulyanConfig",
    "CenteredClip", "CenteredClipConfig", "ComposedStrategy", "Contribution", "DPAdaptiveClipping",
    "DPConfig", "DPFixedClipping", "FedAdagrad", "FedAdagradConfig", "FedAdam", "FedAdamConfig", "FedAvg",
    "FedAvgConfig", "FedAvgM", "FedAvgMConfig", "FedMedian", "FedMedianConfig", "FedProx", "FedProxConfig",
    "FedTrimmedAvg", "FedTrimmedAvgConfig", "FedYogi", "FedYogiConfig", "Krum", "KrumConfig", "MultiKrum",
    "MultiKrumConfig", "OuterConfig", "OuterOptimized", "Requirement", "RoundResult", "ServerOptimizer", "StateDict", "Strategy", "Yogi",
    "build_strategy", "check_min_clients", "parse_aggregation", "proximal_mu",
]
