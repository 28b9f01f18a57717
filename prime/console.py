"""What every prime command line shares: logging, clean errors, signal-driven shutdown.

CLIs stay thin (parse, build, run, close in ``finally``); this module is the
"sync wrapper at the edge" that turns SIGINT/SIGTERM into a graceful stop and a
``PrimeError`` into one clear line on stderr instead of a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

from prime.core.errors import PrimeError
from prime.core.net import parse_hostport

LOG_LEVELS = ("debug", "info", "warning", "error")


def setup_logging(level: str, name: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("kademlia", "rpcudp", "amqtt", "transitions", "aiomqtt"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def hostport_list(text: str) -> list[tuple[str, int]]:
    """argparse type for ``HOST:PORT[,HOST:PORT…]``."""
    try:
        return [parse_hostport(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def hostport(text: str) -> tuple[str, int]:
    try:
        return parse_hostport(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run_main(main: Callable[[Callable[[], None]], Awaitable[int | None]]) -> int:
    """Run ``main(register_stop)``; SIGINT/SIGTERM call the registered stop callback."""

    async def runner() -> int | None:
        loop = asyncio.get_running_loop()
        stops: list[Callable[[], None]] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: [stop() for stop in stops])
        return await main(stops.append)

    try:
        return int(asyncio.run(runner()) or 0)
    except PrimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
