"""Helpers for integration tests that run real prime processes."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
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


def metrics_when(data_dir: Path, condition: Callable[[dict], bool], timeout: float = 10.0) -> dict:
    """A node's metrics.json once ``condition`` holds (it is rewritten every second)."""
    from prime.telemetry import read_metrics

    deadline = time.monotonic() + timeout
    while True:
        metrics = read_metrics(data_dir)
        if metrics is not None and condition(metrics):
            return metrics
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics in {data_dir} never met the condition; last {metrics}")
        time.sleep(0.2)


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


def went_offline(tracker, key: bytes) -> bool:
    """The tracker's last word on ``key`` is its signed offline record (its Last Will)."""
    last = tracker.last(key)
    return last is not None and last.status == "offline"


def self_signed_cert(tmp: Path) -> tuple[Path, Path]:
    """A self-signed server certificate and key, valid for IP 127.0.0.1 (needs the openssl binary)."""
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key
