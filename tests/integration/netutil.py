"""Helpers for integration tests that run real prime processes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from prime.demo import LocalNetwork

T = TypeVar("T")


def wait_for(net: LocalNetwork, condition: Callable[[dict], T], timeout: float, what: str) -> T:
    """Poll the coordinator's status until ``condition(status)`` is truthy; fail with logs if not."""
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        status = net.status()
        if status is not None:
            result = condition(status)
            if result:
                return result
        crashed = {n: rc for n, rc in net.dead().items() if rc not in (0, -9)}
        if crashed:
            name = next(iter(crashed))
            raise AssertionError(f"{name} exited with {crashed[name]} while waiting for {what}:\n{net.log_tail(name)}")
        time.sleep(0.2)
    logs = "\n".join(f"--- {n}\n{net.log_tail(n, 15)}" for n in net.procs)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last status {status}\n{logs}")


async def watch_until(bus, tracker, done: Callable[[], bool], timeout: float = 5.0) -> None:
    """Feed liveness messages from ``bus`` to ``tracker`` until ``done()``; fail after ``timeout``."""
    import asyncio

    async def loop() -> None:
        async for _topic, payload in bus.messages():
            tracker.observe(payload)
            if done():
                return

    if not done():
        await asyncio.wait_for(loop(), timeout)
