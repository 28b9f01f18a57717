"""The /metrics endpoint: a per-process registry served over real sockets; a taken port is
refused at start with its number; bad requests cost nothing."""

from __future__ import annotations

import asyncio

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from prime.core.errors import ConfigError
from prime.observability.collectors import node_registry
from prime.observability.families import budget, committed
from prime.observability.server import MAX_REQUEST_BYTES, MetricsServer


async def get(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data


async def test_serves_its_own_registry_and_refuses_a_taken_port():
    registry, collector = node_registry("dht", "node-a")
    server = await MetricsServer.start(registry, "127.0.0.1", 0)
    try:
        reply = await get(server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body = reply.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200 OK") and b"text/plain" in head
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        assert families["prime_node_info"].samples[0].labels == {"role": "dht", "node": "node-a"}
        assert families["prime_resident_memory_bytes"].samples[0].value > 0
        assert "python_gc_objects_collected" not in families  # not the global registry
        assert (await get(server.port, b"GET /other HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
        assert (await get(server.port, b"POST /metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 405")
        assert await get(server.port, b"GET /" + b"a" * (2 * MAX_REQUEST_BYTES)) == b""  # oversized: dropped
        with pytest.raises(ConfigError, match=rf"--metrics-port {server.port}: port {server.port} on 127.0.0.1 "
                                              r"is already in use"):
            await MetricsServer.start(registry, "127.0.0.1", server.port)
        assert server.scrapes == 1
        assert (await get(server.port, b"GET /metrics HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.1 200")
    finally:
        await server.close()


def test_round_histogram_and_rewards_come_from_the_committed_store():
    import sqlite3

    from prime.core.identity import Identity

    a, b = Identity.generate().public_key, Identity.generate().public_key
    db = sqlite3.connect(":memory:")
    db.executescript("CREATE TABLE rounds(round INTEGER, seconds REAL);"
                     "CREATE TABLE updates(node_key BLOB, node_name TEXT);"
                     "CREATE TABLE ledger(node_key BLOB, amount INTEGER, kind TEXT);")
    db.executemany("INSERT INTO rounds VALUES(?, ?)", [(1, 0.5), (2, 4.0), (3, 4000.0)])
    db.executemany("INSERT INTO updates VALUES(?, ?)", [(a, "alice"), (b, "bob")])
    db.executemany("INSERT INTO ledger VALUES(?, ?, ?)",
                   [(a, 60_000_000, "reward"), (b, 40_000_000, "reward"), (b, -5_000_000, "slash")])
    fams = {f.name: f for f in committed(db)}
    assert fams["prime_rounds"].samples[0].value == 3
    buckets = {s.labels["le"]: s.value for s in fams["prime_round_seconds"].samples if s.name.endswith("_bucket")}
    assert (buckets["1.0"], buckets["5.0"], buckets["3600.0"], buckets["+Inf"]) == (1, 2, 2, 3)
    total = [s.value for s in fams["prime_round_seconds"].samples if s.name.endswith("_sum")]
    assert total == [4004.5]
    rewards = {s.labels["node"]: s.value for s in fams["prime_reward_tokens"].samples}
    assert rewards == {"alice": 60.0, "bob": 40.0}


def test_budget_gauges_follow_their_source():
    assert [f.samples for f in budget(dict)] == [[], []]  # no budget configured: families, no samples
    spend, limit = budget(lambda: {"gpu_hours": (1.5, 10.0), "tokens": (3.0, 4.0)})
    assert [(s.labels["limit"], s.value) for s in spend.samples] == [("gpu_hours", 1.5), ("tokens", 3.0)]
    assert [(s.labels["limit"], s.value) for s in limit.samples] == [("gpu_hours", 10.0), ("tokens", 4.0)]


def test_intake_and_trainer_families():
    from prime.observability.families import intake, trainer

    accepted, refused = intake({"accepted": 7, "rejected": {"stale": 2, "bad_signature": 1}})
    assert accepted.samples[0].value == 7
    assert [(s.labels["reason"], s.value) for s in refused.samples] == [("bad_signature", 1), ("stale", 2)]
    fams = {f.name: f.samples[0].value for f in trainer(
        {"rounds_trained": 3, "current_round": 4},
        {"samples_per_second": 120.0, "tokens_per_second": 4096.0, "loss": 0.5})}
    assert fams == {"prime_rounds_trained": 3, "prime_current_round": 4, "prime_samples_per_second": 120.0,
                    "prime_tokens_per_second": 4096.0, "prime_train_loss": 0.5}


async def test_a_large_transfer_logs_its_progress(caplog):
    from prime.observability.progress import FETCH_PROGRESS_MIN_BYTES, transfer_progress

    got = {"bytes": 0}
    caplog.set_level("INFO", logger="prime.observability.progress")
    async with transfer_progress("fetching model v3", FETCH_PROGRESS_MIN_BYTES, lambda: got["bytes"], every=0.01):
        got["bytes"] = FETCH_PROGRESS_MIN_BYTES // 2
        await asyncio.sleep(0.05)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "fetching model v3: 64.0 MiB"
    assert any(line.startswith("fetching model v3: 32.0 MiB of 64.0 MiB (50%)") for line in lines)
    assert lines[-1].startswith("fetching model v3: done in ")
    caplog.clear()
    async with transfer_progress("small", FETCH_PROGRESS_MIN_BYTES - 1, lambda: 0, every=0.01):
        await asyncio.sleep(0.03)
    assert caplog.records == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_memory_reports_what_cuda_holds():
    from prime.observability.families import gpu_memory

    held = torch.ones(1 << 20, device="cuda")  # 4 MiB
    (family,) = gpu_memory()
    values = {(s.labels["device"], s.labels["kind"]): s.value for s in family.samples}
    assert values[(str(held.device.index), "allocated")] >= held.numel() * 4
    assert values[(str(held.device.index), "reserved")] >= values[(str(held.device.index), "allocated")]


def test_no_gpu_memory_samples_without_cuda_in_use(monkeypatch):
    from prime.observability.families import gpu_memory

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert [f.samples for f in gpu_memory()] == [[]]
