"""One ``CollectorRegistry`` per process, with a collector per node role.

The registry exists before the node does (so ``--metrics-port`` is bound, or refused, before
anything slow starts); ``attach`` hands it the node once it is up. Before that a scrape
answers with the process's own families only.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from prime.observability import families
from prime.observability.families import BudgetSource, no_budget


class NodeCollector(Collector):
    """Families of one node (``coordinator``, ``trainer`` or ``dht``), read at scrape time."""

    def __init__(self, role: str, name: str, budget: BudgetSource = no_budget) -> None:
        self.role = role
        self.name = name
        self.budget = budget
        self.node: Any | None = None

    def attach(self, node: Any) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        yield from families.info(self.role, self.name)
        yield from families.process()
        node = self.node
        if node is None:
            return
        if self.role == "coordinator":
            yield from self._coordinator(node)
        elif self.role == "trainer":
            yield from self._trainer(node)
        elif self.role == "dht":
            yield from families.dht(node.metrics)

    def _coordinator(self, coordinator: Any) -> Iterator[Metric]:
        services = coordinator.services
        yield from families.committed(services.store.db)
        yield from families.intake(coordinator.intake.metrics())
        yield from families.traffic(services.peer, services.bus)
        yield from families.dht(services.peer.dht.metrics)
        yield from families.budget(self.budget)
        yield from families.gpu_memory()

    def _trainer(self, trainer: Any) -> Iterator[Metric]:
        yield from families.trainer(trainer.get_status(), trainer.get_training_metrics())
        yield from families.traffic(trainer.peer, trainer.bus)
        yield from families.gpu_memory()


def node_registry(role: str, name: str, budget: BudgetSource = no_budget) -> tuple[CollectorRegistry, NodeCollector]:
    """A fresh registry (never the global one: tests and embedders run several nodes per process)."""
    registry = CollectorRegistry(auto_describe=False)
    collector = NodeCollector(role, name, budget)
    registry.register(collector)
    return registry, collector
