"""The embedded broker listens on loopback only, and says clearly when it cannot start."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import pytest

from prime.bus.broker import EmbeddedBroker, broker_config
from prime.bus.client import BusClient
from prime.core.errors import BusError


def non_loopback_addresses() -> set[str]:
    """IPv4 addresses of this host other than 127/8 (found without sending a packet)."""
    found: set[str] = set()
    with contextlib.suppress(OSError):
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            found.add(str(info[4][0]))
    for probe in ("192.0.2.1", "10.255.255.255", "8.8.8.8"):
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((probe, 9))  # UDP connect only picks a route; nothing is sent
            found.add(s.getsockname()[0])
    return {a for a in found if not a.startswith("127.") and a != "0.0.0.0"}


def tcp_reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


@pytest.fixture
async def broker(port_factory) -> AsyncIterator[EmbeddedBroker]:
    async with EmbeddedBroker(port=port_factory()) as b:
        yield b


def test_config_binds_loopback_and_has_no_websocket_or_sys_plugins() -> None:
    cfg = broker_config("127.0.0.1", 1883)
    assert cfg["listeners"] == {"default": {"type": "tcp", "bind": "127.0.0.1:1883", "max_connections": 0}}
    assert list(cfg["plugins"]) == ["amqtt.plugins.authentication.AnonymousAuthPlugin"]


async def test_reachable_on_loopback(broker: EmbeddedBroker) -> None:
    assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
    assert await asyncio.to_thread(tcp_reachable, "127.0.0.1", broker.port)
    async with BusClient(broker.url, "probe", max_retries=0, timeout=2):
        pass


async def test_not_reachable_on_other_addresses(broker: EmbeddedBroker) -> None:
    addresses = non_loopback_addresses()
    if not addresses:
        pytest.skip("this host has no non-loopback IPv4 address")
    for addr in sorted(addresses):
        assert not await asyncio.to_thread(tcp_reachable, addr, broker.port), f"broker reachable on {addr}"


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "example.com", "::"])
def test_non_loopback_host_is_refused(host: str) -> None:
    with pytest.raises(BusError, match="allow_remote"):
        EmbeddedBroker(host, 1883)


async def test_localhost_means_ipv4_loopback(port_factory) -> None:
    async with EmbeddedBroker("localhost", port_factory()) as b:
        assert b.host == "127.0.0.1"


async def test_port_zero_reports_the_real_port() -> None:
    b = await EmbeddedBroker.start(port=0)
    try:
        assert b.port > 0 and b.running
        async with BusClient(b.url, "p0", max_retries=0):
            pass
    finally:
        await b.stop()
        await b.stop()  # idempotent
    assert not b.running


async def test_port_in_use_is_a_clear_bus_error(broker: EmbeddedBroker) -> None:
    with pytest.raises(BusError, match=rf"127.0.0.1:{broker.port}.*another broker"):
        await EmbeddedBroker.start(port=broker.port)


def test_run_broker_serves_until_sigterm(port_factory) -> None:
    port = port_factory()
    code = f"from prime.bus.broker import run_broker; run_broker('127.0.0.1', {port})"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert f"mqtt://127.0.0.1:{port}" in line, line + (proc.stderr.read() if proc.stderr else "")
        assert tcp_reachable("127.0.0.1", port)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        deadline = time.monotonic() + 2
        while tcp_reachable("127.0.0.1", port) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not tcp_reachable("127.0.0.1", port)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
