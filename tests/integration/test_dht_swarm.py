"""Peer-assisted blob fetches on real sockets (127.0.0.1): peers first, load spread, origin last, lies survived."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from prime.core.errors import BlobError
from prime.core.identity import Identity
from prime.blobs.fetch import fetch_blob
from prime.blobs.service import BlobServer
from prime.blobs.store import BlobStore
from prime.dht.node import DHTNode
from prime.dht.swarm import (
    announce_provider,
    fetch_with_peers,
    find_providers,
    order_providers,
    provider_lookup,
    serve_held,
)

BLOB = os.urandom(256 * 1024 + 7)
DIGEST = hashlib.sha256(BLOB).hexdigest()


def holding(root: Path) -> BlobStore:
    store = BlobStore(root)
    store.put_bytes(BLOB)
    return store


@pytest.fixture
async def origin(tmp_path: Path) -> AsyncIterator[BlobServer]:
    server = await BlobServer.start(holding(tmp_path / "origin"), timeout=2.0)
    yield server
    await server.close()


@pytest.fixture
async def seeders(tmp_path: Path) -> AsyncIterator[list[BlobServer]]:
    servers = [await serve_held(holding(tmp_path / f"seed-{i}"), max_clients=5, timeout=2.0) for i in range(3)]
    yield servers
    for server in servers:
        await server.close()


def test_order_puts_shuffled_peers_before_origin_and_drops_self():
    peers = [("127.0.0.1", p) for p in range(1, 9)]
    origin = ("127.0.0.1", 99)
    firsts = set()
    for seed in range(20):
        order = order_providers(peers + [origin, peers[0]], [origin], exclude=[peers[1]], rng=random.Random(seed))
        assert order[-1] == origin and peers[1] not in order and len(order) == len(set(order)) == 8
        firsts.add(order[0])
    assert len(firsts) > 3  # independent fetchers start at different peers


async def test_fetches_spread_over_peers_and_spare_the_origin(
    origin: BlobServer, seeders: list[BlobServer], tmp_path: Path
) -> None:
    peers = [s.address for s in seeders]
    fetched = await asyncio.gather(*(
        fetch_with_peers(peers, DIGEST, BlobStore(tmp_path / f"f{i}"), origin=[origin.address],
                         timeout=2, rng=random.Random(i))
        for i in range(12)
    ))
    assert all(f.path.read_bytes() == BLOB and f.source in peers for f in fetched)
    assert origin.metrics.served == 0
    assert [s.metrics.served for s in seeders] == [s.metrics.served for s in seeders if s.metrics.served > 0]
    assert sum(s.metrics.served for s in seeders) == 12


async def test_busy_dead_and_lying_peers_fall_through_to_origin(
    origin: BlobServer, tmp_path: Path, port_factory
) -> None:
    busy = await serve_held(holding(tmp_path / "busy"), max_clients=0)
    liar_store = BlobStore(tmp_path / "liar")
    wrong = liar_store.put_bytes(os.urandom(len(BLOB)))
    liar_store.path = lambda digest: BlobStore.path(liar_store, wrong)  # serves other bytes for any digest
    liar = await serve_held(liar_store)
    dead = ("127.0.0.1", port_factory())
    local = BlobStore(tmp_path / "local")
    try:
        path, source = await fetch_with_peers([busy.address, liar.address, dead], DIGEST, local,
                                              origin=[origin.address], timeout=2)
        assert path.read_bytes() == BLOB and source == origin.address and origin.metrics.served == 1
        assert busy.metrics.aborted["busy"] == 1 and liar.metrics.served == 1
        assert list(local.tmp_dir.iterdir()) == []
    finally:
        await busy.close()
        await liar.close()


async def test_waits_for_a_provider_to_appear(origin: BlobServer, tmp_path: Path) -> None:
    """Nobody holds it yet, then a peer finishes and announces: the fetcher finds it on a later pass."""
    calls = 0

    async def providers() -> list[tuple[str, int]]:
        nonlocal calls
        calls += 1
        return [origin.address] if calls >= 3 else []

    path, _ = await fetch_with_peers(providers, DIGEST, BlobStore(tmp_path / "late"), timeout=2, deadline=10)
    assert path.read_bytes() == BLOB and calls == 3


async def test_gives_up_at_the_deadline_and_says_why(tmp_path: Path, port_factory) -> None:
    dead = ("127.0.0.1", port_factory())
    started = time.monotonic()
    with pytest.raises(BlobError, match=f"within 1s: 127.0.0.1:{dead[1]}: cannot connect"):
        await fetch_with_peers([dead], DIGEST, BlobStore(tmp_path / "x"), timeout=1, deadline=1)
    assert time.monotonic() - started < 5


async def test_a_fetcher_seeds_what_it_fetched(origin: BlobServer, tmp_path: Path) -> None:
    first = BlobStore(tmp_path / "first")
    await fetch_with_peers([], DIGEST, first, origin=[origin.address], timeout=2)
    async with await serve_held(first) as seed:
        second = BlobStore(tmp_path / "second")
        assert (await fetch_with_peers([seed.address], DIGEST, second, origin=[origin.address], timeout=2)).source \
            == seed.address
        assert seed.metrics.served == 1 and origin.metrics.served == 1
        assert await fetch_with_peers([seed.address], DIGEST, second, timeout=2) == (second.path(DIGEST), None)


async def test_a_running_server_limits_uploads_of_one_digest(tmp_path: Path) -> None:
    """``limit_uploads`` caps concurrent sends of the broadcast blob only; the rest are refused at once."""
    store = holding(tmp_path / "node")
    other = store.put_bytes(os.urandom(4096))
    async with await BlobServer.start(store, max_bytes_per_second=2 * 1024 * 1024, timeout=5) as server:
        server.limit_uploads(DIGEST, 1)
        results = await asyncio.gather(*(fetch_blob(*server.address, DIGEST, BlobStore(tmp_path / f"c{i}"), timeout=5)
                                         for i in range(3)), return_exceptions=True)
        assert sum(isinstance(r, Path) for r in results) == 1 and server.metrics.aborted["busy"] == 2
        assert all(isinstance(r, BlobError) for r in results if not isinstance(r, Path))
        await asyncio.gather(*(fetch_blob(*server.address, other, BlobStore(tmp_path / f"o{i}"), timeout=5)
                               for i in range(3)))
        assert server.metrics.aborted["busy"] == 2


async def test_upload_cap_paces_transfers(tmp_path: Path) -> None:
    blob = os.urandom(1024 * 1024)
    store = BlobStore(tmp_path / "capped")
    digest = store.put_bytes(blob)
    async with await BlobServer.start(store, max_bytes_per_second=4 * 1024 * 1024) as server:
        started = time.monotonic()
        await asyncio.gather(*(fetch_blob(*server.address, digest, BlobStore(tmp_path / f"c{i}"), timeout=5)
                               for i in range(2)))
        elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 3.0  # 2 MiB through a 4 MiB/s uplink: about half a second
    with pytest.raises(ValueError):
        await BlobServer.start(store, max_bytes_per_second=0)


async def test_providers_announced_and_found_through_the_dht(origin: BlobServer) -> None:
    boot = await DHTNode.create(timeout=1.0)
    other = await DHTNode.create(bootstrap=[boot.address], timeout=1.0)
    alice, bob, carol = (Identity.from_seed(bytes([c]) * 32) for c in b"abc")
    try:
        await announce_provider(boot, alice, DIGEST, origin.address)
        await announce_provider(other, bob, DIGEST, ("127.0.0.1", 1))
        found = await find_providers(other, [alice.public_key, bob.public_key, carol.public_key], DIGEST)
        assert sorted(found) == sorted([origin.address, ("127.0.0.1", 1)])
        lookup = provider_lookup(boot, [alice.public_key], DIGEST)
        assert await lookup() == [origin.address]
        one_at_a_time = provider_lookup(other, [alice.public_key, bob.public_key, carol.public_key], DIGEST,
                                        sample=1, rng=random.Random(0))
        seen = [tuple(await one_at_a_time()) for _ in range(12)]
        assert all(len(found) <= 1 for found in seen)
        assert {found[0] for found in seen if found} == {origin.address, ("127.0.0.1", 1)}
    finally:
        await other.close()
        await boot.close()
