"""Aggregation strategies: pure functions of updates, no sockets, no disk."""

from prime.core.aggregation.base import Contribution, Strategy
from prime.core.aggregation.fedavg import FedAvg
from prime.core.config import AggregationStrategy


def build_strategy(name: AggregationStrategy) -> Strategy:
    """The strategy a job config names."""
    if name is AggregationStrategy.FEDAVG:
        return FedAvg()
    raise ValueError(f"unknown aggregation strategy {name!r}")


__all__ = ["Contribution", "FedAvg", "Strategy", "build_strategy"]
