"""``--metrics-port`` / ``--metrics-host`` for every node's command line, and the endpoint they open.

Light to import: ``prime keygen`` and friends add no Prometheus import time."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any


def port_number(text: str) -> int:
    """argparse type for a TCP port to listen on: 1-65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is outside 1-65535")
    return port


def add_metrics_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics-port", type=port_number,
                        help="serve Prometheus metrics at http://HOST:PORT/metrics (default: not served)")
    parser.add_argument("--metrics-host", default="127.0.0.1",
                        help="address the metrics endpoint binds (default 127.0.0.1: this machine only)")


@contextlib.asynccontextmanager
async def metrics_endpoint(args: argparse.Namespace, role: str, name: str,
                           budget: Callable[[], dict[str, tuple[float, float]]] | None = None) -> AsyncIterator[Any]:
    """Serve this process's metrics while the block runs (when ``--metrics-port`` is given);
    ``attach`` the node to the ``NodeCollector`` it yields once the node is up. ``budget``
    returns ``{limit: (spent, limit)}`` (``families.BudgetSource``)."""
    from prime.observability.collectors import node_registry  # prometheus_client only for the nodes
    from prime.observability.families import no_budget
    from prime.observability.server import MetricsServer

    registry, collector = node_registry(role, name, budget or no_budget)
    port = getattr(args, "metrics_port", None)
    server = await MetricsServer.start(registry, getattr(args, "metrics_host", "127.0.0.1"), port) if port is not None else None
    try:
        yield collector
    finally:
        if server is not None:
            await server.close()
