"""``--metrics-port`` / ``--metrics-host`` for every node's command line, and the endpoint they open."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator

from prime.observability.collectors import NodeCollector, node_registry
from prime.observability.families import BudgetSource, no_budget
from prime.observability.server import MetricsServer


def add_metrics_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics-port", type=int,
                        help="serve Prometheus metrics at http://HOST:PORT/metrics (default: not served)")
    parser.add_argument("--metrics-host", default="127.0.0.1",
                        help="address the metrics endpoint binds (default 127.0.0.1: this machine only)")


@contextlib.asynccontextmanager
async def metrics_endpoint(args: argparse.Namespace, role: str, name: str,
                           budget: BudgetSource = no_budget) -> AsyncIterator[NodeCollector]:
    """Serve this process's metrics while the block runs (when ``--metrics-port`` is given);
    ``attach`` the node to the collector it yields once the node is up."""
    registry, collector = node_registry(role, name, budget)
    port = getattr(args, "metrics_port", None)
    server = await MetricsServer.start(registry, getattr(args, "metrics_host", "127.0.0.1"), port) if port is not None else None
    try:
        yield collector
    finally:
        if server is not None:
            await server.close()
