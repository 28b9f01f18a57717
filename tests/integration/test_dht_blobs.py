"""Blob service over real TCP on 127.0.0.1: streamed, verified, capped, and robust to bad peers."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from prime.core import encoding
from prime.core.errors import BlobError
from prime.blobs.fetch import fetch_blob, fetch_from_any, fetch_verified
from prime.blobs.service import BlobServer
from prime.blobs.wire import encode_frame, encode_request
from prime.blobs.store import BlobStore

BLOB = os.urandom(5 * 1024 * 1024 + 123)
DIGEST = hashlib.sha256(BLOB).hexdigest()


class TamperedStore(BlobStore):
    """A provider whose file for DIGEST holds other bytes (disk rot or malice)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self._wrong = self.put_bytes(bytes(len(BLOB)))

    def path(self, digest: str) -> Path:
        return super().path(self._wrong)


@pytest.fixture
async def honest(tmp_path: Path) -> AsyncIterator[BlobServer]:
    store = BlobStore(tmp_path / "honest")
    await asyncio.to_thread(store.put_bytes, BLOB)
    server = await BlobServer.start(store, timeout=2.0)
    yield server
    await server.close()


@pytest.fixture
async def tampered(tmp_path: Path) -> AsyncIterator[BlobServer]:
    server = await BlobServer.start(TamperedStore(tmp_path / "tampered"), timeout=2.0)
    yield server
    await server.close()


@pytest.fixture
def local(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "local")


def nothing_left(store: BlobStore) -> bool:
    return list(store.tmp_dir.iterdir()) == [] and list(store.objects_dir.rglob("*")) == []


async def test_fetch_5mb_blob_verified(honest: BlobServer, local: BlobStore) -> None:
    assert honest.address[0] == "127.0.0.1"
    path = await fetch_blob(*honest.address, DIGEST, local, max_bytes=10 * 2**20, timeout=5)
    assert path == local.path(DIGEST)
    assert await asyncio.to_thread(local.read_bytes, DIGEST) == BLOB
    assert honest.metrics.served == 1 and honest.metrics.bytes_sent == len(BLOB)
    # already here: no network needed, even from a provider that does not exist
    assert await fetch_from_any([("127.0.0.1", 1)], DIGEST, local) == path


async def test_tampered_provider_detected_and_fallback_used(
    tampered: BlobServer, honest: BlobServer, local: BlobStore
) -> None:
    with pytest.raises(BlobError, match="digest mismatch"):
        await fetch_blob(*tampered.address, DIGEST, local, timeout=5)
    assert nothing_left(local)
    path = await fetch_from_any([tampered.address, honest.address], DIGEST, local, timeout=5)
    assert await asyncio.to_thread(local.read_bytes, DIGEST) == BLOB and path.is_file()
    assert tampered.metrics.served == 2 and honest.metrics.served == 1


async def test_all_providers_failing_lists_each(tampered: BlobServer, local: BlobStore, port_factory: Any) -> None:
    dead = ("127.0.0.1", port_factory())
    with pytest.raises(BlobError) as info:
        await fetch_from_any([tampered.address, dead], DIGEST, local, timeout=2)
    message = str(info.value)
    assert f"{tampered.address[0]}:{tampered.address[1]}: " in message and "digest mismatch" in message
    assert f"{dead[0]}:{dead[1]}: cannot connect" in message
    assert nothing_left(local)
    with pytest.raises(BlobError, match="no providers given"):
        await fetch_from_any([], DIGEST, local)


async def test_size_cap_refused_before_reading(honest: BlobServer, local: BlobStore) -> None:
    with pytest.raises(BlobError, match="over the 1048576-byte limit"):
        await fetch_blob(*honest.address, DIGEST, local, max_bytes=2**20, timeout=5)
    assert nothing_left(local)


async def test_server_side_cap_and_not_found(tmp_path: Path, local: BlobStore) -> None:
    store = BlobStore(tmp_path / "small")
    digest = store.put_bytes(b"x" * 1000)
    async with await BlobServer.start(store, max_blob_bytes=100) as server:
        with pytest.raises(BlobError, match="answered too_large"):
            await fetch_blob(*server.address, digest, local)
        with pytest.raises(BlobError, match="answered not_found"):
            await fetch_blob(*server.address, DIGEST, local)
        assert server.metrics.too_large == 1 and server.metrics.not_found == 1
    assert nothing_left(local)


async def raw_exchange(address: tuple[str, int], data: bytes, close_early: bool = False) -> bytes:
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(data)
        await writer.drain()
        if close_early:
            return b""
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_malformed_requests_counted_and_server_keeps_serving(honest: BlobServer, local: BlobStore) -> None:
    bad_request = encode_frame({"status": "bad_request", "size": 0})
    hostile = {
        "oversize": (10**6).to_bytes(4, "big") + b"x" * 100,
        "bad_msgpack": (3).to_bytes(4, "big") + b"\xc1\xc1\xc1",
        "bad_shape": encode_frame(["digest", DIGEST]),
        "bad_digest": encode_frame({"digest": "../../../etc/passwd"}),
    }
    for data in hostile.values():
        assert await raw_exchange(honest.address, data) == bad_request
    await raw_exchange(honest.address, b"\x00\x00", close_early=True)  # truncated, then gone
    await raw_exchange(honest.address, b"", close_early=True)
    for _ in range(50):
        if sum(honest.metrics.bad_requests.values()) >= 6:
            break
        await asyncio.sleep(0.02)
    assert honest.metrics.bad_requests == {reason: 1 for reason in hostile} | {"truncated": 2}
    assert (await fetch_blob(*honest.address, DIGEST, local, timeout=5)).is_file()


async def test_silent_client_times_out(tmp_path: Path) -> None:
    async with await BlobServer.start(BlobStore(tmp_path / "s"), timeout=0.2) as server:
        reader, writer = await asyncio.open_connection(*server.address)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # server hung up on us
        writer.close()
        assert server.metrics.bad_requests == {"timeout": 1}


async def test_stalled_provider_times_out_and_partial_discarded(local: BlobStore) -> None:
    release = asyncio.Event()

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(len(encode_request(DIGEST)))
        writer.write(encode_frame({"status": "ok", "size": len(BLOB)}) + BLOB[:1000])
        await writer.drain()
        await release.wait()
        writer.close()

    server = await asyncio.start_server(stall, "127.0.0.1", 0)
    try:
        address = server.sockets[0].getsockname()[:2]
        with pytest.raises(BlobError, match="stalled"):
            await fetch_blob(*address, DIGEST, local, timeout=0.3)
        assert nothing_left(local)
    finally:
        release.set()
        server.close()
        await server.wait_closed()


async def test_provider_with_malformed_header(local: BlobStore) -> None:
    async def liar(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(len(encode_request(DIGEST)))
        body = encoding.pack({"status": "ok", "size": -5})
        writer.write(len(body).to_bytes(4, "big") + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(liar, "127.0.0.1", 0)
    try:
        with pytest.raises(BlobError, match="malformed header"):
            await fetch_blob(*server.sockets[0].getsockname()[:2], DIGEST, local, timeout=2)
    finally:
        server.close()


async def test_invalid_digest_refused_without_network(local: BlobStore) -> None:
    with pytest.raises(BlobError, match="invalid blob digest"):
        await fetch_blob("127.0.0.1", 1, "../etc/passwd", local)


async def test_fetch_verified_hands_over_writable_bytes_and_stores_nothing(
    tampered: BlobServer, honest: BlobServer, local: BlobStore
) -> None:
    data = await fetch_verified([tampered.address, honest.address], DIGEST, local, timeout=5)
    assert bytes(data) == BLOB and not data.readonly
    assert nothing_left(local)  # the caller decides whether to keep it (put_verified)
    path = await asyncio.to_thread(local.put_verified, DIGEST, data)
    assert path == local.path(DIGEST) and await asyncio.to_thread(local.read_bytes, DIGEST) == BLOB


async def test_fetch_verified_replaces_a_copy_that_rotted_on_disk(honest: BlobServer, local: BlobStore) -> None:
    path = local.put_verified(DIGEST, BLOB)
    path.chmod(0o644)
    path.write_bytes(b"\x00" + BLOB[1:])
    data = await fetch_verified([honest.address], DIGEST, local, timeout=5)
    assert bytes(data) == BLOB and honest.metrics.served == 1
    assert not local.has(DIGEST)  # the rotten copy is gone
    # an intact copy is used without the network, re-verified, as a private mapping
    local.put_verified(DIGEST, BLOB)
    again = await fetch_verified([("127.0.0.1", 1)], DIGEST, local, timeout=5)
    assert bytes(again) == BLOB and not again.readonly and honest.metrics.served == 1
