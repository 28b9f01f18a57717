"""Shared fixtures: free loopback ports and per-test data dirs."""

from __future__ import annotations

import pytest

from prime.core.net import free_port


@pytest.fixture
def port_factory():
    """Call it to get a loopback port free for TCP and UDP."""
    return free_port
