"""Retry with exponential backoff for network operations that may fail transiently.

Transient failures (a peer restarting, a packet lost) are retried quietly up to
``max_retries`` times; the final failure is logged once, with what was tried,
and re-raised unchanged so callers still see prime's own error types.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from prime.core.errors import PrimeError

T = TypeVar("T")
log = logging.getLogger(__name__)


def backoff_delays(max_retries: int, base: float = 0.1, cap: float = 2.0) -> list[float]:
    """Delays before each retry: base, 2·base, 4·base, … capped at ``cap``."""
    return [min(cap, base * 2**i) for i in range(max_retries)]


async def with_retries(
    operation: Callable[[], Awaitable[T]],
    *,
    what: str,
    max_retries: int,
    retry_on: tuple[type[BaseException], ...] = (PrimeError,),
    base_delay: float = 0.1,
) -> T:
    """Run ``operation()``; on ``retry_on`` errors wait and try again, ``max_retries`` times."""
    delays = backoff_delays(max_retries, base_delay)
    for attempt, delay in enumerate([*delays, None], start=1):
        try:
            return await operation()
        except retry_on as exc:
            if delay is None:
                log.error("%s failed after %d attempt(s): %s", what, attempt, exc)
                raise
            log.debug("%s failed (attempt %d, retrying in %.2fs): %s", what, attempt, delay, exc)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")
