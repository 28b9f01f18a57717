"""mqtts:// with a CA file, against an amqtt TLS listener on 127.0.0.1."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from amqtt.broker import Broker

from prime.bus.broker import broker_config
from prime.bus.client import BusClient
from prime.core.errors import BusError
from tests.integration.netutil import self_signed_cert

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl binary")


@pytest.fixture
async def tls_broker(tmp_path: Path, port_factory) -> AsyncIterator[tuple[int, Path]]:
    cert, key = await asyncio.to_thread(self_signed_cert, tmp_path)
    port = port_factory()
    cfg = broker_config("127.0.0.1", port)
    cfg["listeners"]["default"].update(ssl=True, certfile=str(cert), keyfile=str(key))
    broker = Broker(cfg)
    await broker.start()
    try:
        yield port, cert
    finally:
        await broker.shutdown()


async def test_mqtts_roundtrip_with_ca_file(tls_broker: tuple[int, Path]) -> None:
    port, cert = tls_broker
    url = f"mqtts://127.0.0.1:{port}"
    async with BusClient(url, "tls-sub", ca_file=cert) as sub, BusClient(url, "tls-pub", ca_file=cert) as pub:
        await sub.subscribe("prime/tls/x")
        await pub.publish("prime/tls/x", b"secret")
        async for topic, payload in sub.messages():
            assert (topic, payload) == ("prime/tls/x", b"secret")
            break


async def test_mqtts_refuses_an_untrusted_certificate(tls_broker: tuple[int, Path]) -> None:
    port, _cert = tls_broker
    with pytest.raises(BusError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        async with BusClient(f"mqtts://127.0.0.1:{port}", "tls-x", max_retries=0, timeout=2):
            pass
