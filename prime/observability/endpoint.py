"""``--metrics-port`` / ``--metrics-host`` for every node's command line, and the endpoint they open.

A CLI wraps its main coroutine in ``endpoint.serving(main)`` (the port is bound, or refused,
before anything slow starts) and calls ``endpoint.attach(node)`` once its node is up. Light
to import: ``prime keygen`` and friends pay no Prometheus import time.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any

Main = Callable[[Callable[[Callable[[], None]], None]], Awaitable[int | None]]


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


class MetricsEndpoint:
    """One process's metrics: its registry, its node's collector, and the server when a port is given.

    ``budget`` returns ``{limit: (spent, limit)}`` (``families.BudgetSource``; none by default)."""

    def __init__(self, args: argparse.Namespace, role: str, name: str,
                 budget: Callable[[], dict[str, tuple[float, float]]] | None = None) -> None:
        from prime.observability.collectors import node_registry
        from prime.observability.families import no_budget

        self.port: int | None = getattr(args, "metrics_port", None)
        self.host: str = getattr(args, "metrics_host", "127.0.0.1")
        self.registry, self.collector = node_registry(role, name, budget or no_budget)

    def attach(self, node: Any, budget: Callable[[], dict[str, tuple[float, float]]] | None = None) -> None:
        """From now on, scrapes read ``node``'s live state (and ``budget``'s usage, when given)."""
        self.collector.attach(node)
        if budget is not None:
            self.collector.budget = budget

    def serving(self, main: Main) -> Main:
        """``main`` with the endpoint open around it (``run_main(endpoint.serving(run))``)."""

        async def run(on_stop: Callable[[Callable[[], None]], None]) -> int | None:
            from prime.observability.server import MetricsServer

            server = await MetricsServer.start(self.registry, self.host, self.port) if self.port is not None else None
            try:
                return await main(on_stop)
            finally:
                if server is not None:
                    await server.close()

        return run
