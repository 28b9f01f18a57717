"""Shared fixtures: free loopback ports, and what the event loop reports."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from prime.core.net import free_port


@pytest.fixture
def port_factory():
    """Call it to get a loopback port free for TCP and UDP."""
    return free_port


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """Collect what the event loop reports (e.g. 'Task exception was never retrieved')."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield errors
    loop.set_exception_handler(previous)
