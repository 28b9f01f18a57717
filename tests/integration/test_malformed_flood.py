"""Invariant 4 under fire: a real network keeps committing rounds while garbage floods it.

A coordinator, a DHT bootstrap node, a broker and three trainers run as separate
processes (rounds never end: ``federated.rounds = 0``). Once two rounds have committed,
this process floods them on 127.0.0.1 with:

* UDP: 10,000 malformed datagrams to the coordinator's DHT port and 1,000 to each
  trainer's (random bytes, truncated or garbage rpcudp frames, unknown RPC names,
  wrong arity and types, oversized datagrams, unsolicited replies, and well-shaped
  STOREs whose values are forged, unsigned or not records at all);
* MQTT: 1,200 malformed messages on the job's ``updates``, ``liveness/…``,
  ``announce`` and ``committed`` topics (never retained), some over the 64 KiB cap;
* TCP: 1,000 malformed blob requests to the coordinator's blob port and 150 to each
  trainer's (bad length prefixes, bad msgpack, bad shapes and digests, half frames,
  plus a few stalled connections).

Then it checks that every process is still up, rounds committed during and after the
flood with every honest trainer accepted in each, the nodes' ``metrics.json`` counted
the drops by reason, the coordinator's memory stayed bounded, anonymous junk did not
flood the rejections table, and no garbage is left retained on the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import umsgpack

from prime.bus.client import BusClient
from prime.bus.topics import Topics
from prime.coordinator.intake import MAX_UNATTRIBUTED_RECORDED
from prime.coordinator.status import DB_NAME
from prime.core import encoding, parcel
from prime.core.config import NetworkConfig
from prime.core.envelope import Domain, Envelope, seal
from prime.core.identity import Identity, network_id
from prime.core.records import RoundAnnouncement, RoundCommitted, dht_announce_name, dht_update_name
from prime.demo import LocalNetwork
from prime.blobs.wire import MAX_FRAME_BYTES
from prime.dht.records import dht_digest, dht_key
from prime.telemetry import read_metrics
from tests.integration.netutil import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

UDP_TO_COORDINATOR = 10_000
UDP_TO_EACH_TRAINER = 1_000
BLOB_TO_COORDINATOR = 1_000
BLOB_TO_EACH_TRAINER = 150
STALLED_BLOB_CLIENTS = 4  # slow-loris connections; the server times them out (10 s)
BUS_UPDATES, BUS_LIVENESS, BUS_ANNOUNCE, BUS_COMMITTED = 500, 300, 200, 200
BUS_OVERSIZED = 10  # of the update and announce junk each, over the bus cap
#: The nodes' bus cap: a signed record plus an inline blob of the default size.
BUS_CAP = parcel.max_parcel_bytes(NetworkConfig().inline_blob_max_bytes)
#: The coordinator holds ~350 MB (torch, the model, the test split). Garbage is never
#: stored: DHT storage keeps only verified records, the liveness tracker only signed
#: heartbeats, the blob server nothing, anonymous rejections at most 20 DB rows a round.
#: What the flood itself sends the coordinator is ~6 MB, so a leak of the datagrams, or
#: of a few KB of state per message (13,000+ messages), would show; allocator noise from
#: the rounds that run meanwhile (thread-pool arenas, SQLite cache) stays well below.
RSS_GROWTH_BOUND = 64 * 1024 * 1024
#: UDP on loopback is lossy by design: when the receiver's socket buffer (rmem_default,
#: ~208 KiB) is full, the kernel drops the datagram before the node ever sees it. The
#: sender is paced, but the receivers share two cores with five other busy processes
#: and a stalled event loop (an fsync, a GIL-heavy aggregation) lets the buffer fill.
UDP_MIN_COUNTED = 0.5

MALLORY = Identity.from_seed(b"m" * 32)


@dataclass
class Sent:
    udp_dropped: dict[str, int] = field(default_factory=dict)  # node -> datagrams meant for `dropped`
    udp_refused: dict[str, int] = field(default_factory=dict)  # node -> STOREs meant for `refused`
    blob: dict[str, int] = field(default_factory=dict)
    bus: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


# -- garbage makers ------------------------------------------------------------------------


def udp_garbage(rng: random.Random, n: int, coordinator_key: bytes, trainer_keys: list[bytes], job_id: str
                ) -> tuple[list[bytes], int]:
    """``n`` malformed datagrams; returns them and how many are (refusable) STOREs."""

    def rid() -> bytes:
        return rng.randbytes(20)

    def frame(obj: Any, kind: bytes = b"\x00") -> bytes:
        return kind + rid() + umsgpack.packb(obj)

    def store(dkey: bytes, value: bytes) -> bytes:
        return frame(["store", [rid(), dkey, value]])

    def forged_owner() -> bytes:  # a record naming a victim as owner, signed by mallory
        victim, name = rng.choice([(coordinator_key, dht_announce_name(job_id))]
                                  + [(k, dht_update_name(job_id, rng.randrange(1, 500))) for k in trainer_keys])
        key, now = dht_key(victim, name), time.time()
        payload = {"key": key, "value": {"update": rng.randbytes(64)}, "issued": now, "expires": now + 300}
        return store(dht_digest(key), seal(MALLORY, Domain.DHT_RECORD, payload).to_bytes())

    def unsigned() -> bytes:  # right owner, signature zeros or random
        victim = rng.choice([coordinator_key, *trainer_keys])
        key, now = dht_key(victim, dht_announce_name(job_id)), time.time()
        payload = encoding.pack({"key": key, "value": {}, "issued": now, "expires": now + 300})
        sig = bytes(64) if rng.random() < 0.5 else rng.randbytes(64)
        return store(dht_digest(key), Envelope(Domain.DHT_RECORD.value, victim, payload, sig).to_bytes())

    def not_a_record() -> bytes:
        return store(rid(), rng.choice([b"", b"\xc1", rng.randbytes(rng.randrange(1, 2000)), umsgpack.packb([1, 2])]))

    def truncated_valid() -> bytes:
        full = frame(["find_value", [rid(), rid()]])
        return full[: rng.randrange(22, len(full))]

    droppers: list[Callable[[], bytes]] = [
        lambda: rng.randbytes(rng.randrange(0, 21)),  # too short
        lambda: rng.choice([b"\x02", b"\x10", b"\xff"]) + rid() + rng.randbytes(8),  # unknown kind
        lambda: b"\x00" + rid() + rng.randbytes(rng.randrange(1, 400)),  # umsgpack garbage
        truncated_valid,
        lambda: b"\x00" + rid() + b"\x91" * 5000 + b"\xc0",  # nesting bomb
        lambda: b"\x00" + rid() + b"\xdd\xff\xff\xff\xff",  # 4-billion-item array header
        lambda: b"\x00" + rid() + b"\xdb\x7f\xff\xff\xff" + b"x" * 10,  # 2 GB string header
        lambda: frame({"store": [1, 2, 3]}),  # bad shape
        lambda: frame(["store"]),
        lambda: frame(rng.choice([["delete_everything", []], ["__init__", []], ["rpc_store", [rid(), rid(), b""]],
                                  ["welcome_if_new", [rid()]], ["_outstanding", []], ["", []]])),  # unknown rpc
        lambda: frame(["store", [rid()]]),  # wrong arity
        lambda: frame(["find_node", []]),
        lambda: frame(["ping", [rid(), rid()]]),
        lambda: frame(["store", [1, 2, 3]]),  # wrong types
        lambda: frame(["find_value", [rid(), b"short"]]),
        lambda: frame(["ping", ["not bytes"]]),
        lambda: frame(True, kind=b"\x01"),  # a reply nobody asked for
        lambda: frame([rid(), "127.0.0.1", 1], kind=b"\x01"),
    ]
    storers = [forged_owner, unsigned, not_a_record]
    out: list[bytes] = []
    stores = 0
    for i in range(n):
        if i % 100 == 50:
            out.append(b"\x00" + rid() + rng.randbytes(9_000))  # over rpcudp's 8 KB cap
        elif i % 2_000 == 1_000:
            out.append(b"\x00" + rid() + rng.randbytes(60_000))  # near the UDP maximum
        elif i % 5 == 0:
            out.append(storers[(i // 5) % len(storers)]())
            stores += 1
        else:
            out.append(droppers[i % len(droppers)]())
    return out, stores


def blob_garbage(rng: random.Random, n: int) -> list[tuple[bytes, bool]]:
    """``n`` malformed requests as (bytes to send, whether to read the answer before closing)."""

    def framed(body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + body

    makers: list[Callable[[], tuple[bytes, bool]]] = [
        lambda: (b"", False),  # connect, close
        lambda: (b"\x00\x00", False),  # half a length prefix
        lambda: (b"\x00\x00\x00\x00", True),  # zero-length frame
        lambda: (b"\xff\xff\xff\xff" + rng.randbytes(32), True),  # 4 GB frame
        lambda: ((MAX_FRAME_BYTES + 1).to_bytes(4, "big") + b"x" * 16, True),  # just over the cap
        lambda: (framed(b"\xc1"), True),  # never-used msgpack byte
        lambda: (framed(rng.randbytes(rng.randrange(1, MAX_FRAME_BYTES))), True),  # random body
        lambda: (framed(b"\x91" * 200 + b"\xc0"), True),  # nesting
        lambda: (framed(encoding.pack([1, 2, 3])), True),  # not a map
        lambda: (framed(encoding.pack({"digest": "ab" * 32, "evil": 1})), True),  # extra key
        lambda: (framed(encoding.pack({"digest": "zz" * 32})), True),  # bad digests
        lambda: (framed(encoding.pack({"digest": "AB" * 32})), True),
        lambda: (framed(encoding.pack({"digest": 12345})), True),
        lambda: (framed(encoding.pack({"digest": "ab" * 31})), True),
        lambda: (framed(encoding.pack({"digest": "../" * 20 + "etc/pwd"})), True),
        lambda: (framed(encoding.pack({"digest": "ab" * 32}))[:20], False),  # half a frame
        lambda: ((200).to_bytes(4, "big") + b"\x81", False),  # promises 200 bytes, sends 1
    ]
    return [makers[i % len(makers)]() for i in range(n)]


def bus_garbage(rng: random.Random, topics: Topics, coordinator_key: bytes, trainer_keys: list[bytes]
                ) -> list[tuple[str, bytes]]:
    def randoms() -> bytes:
        return rng.choice([b"", b"\xc1", rng.randbytes(rng.randrange(1, 3000)), encoding.pack([1, 2]),
                           encoding.pack({"d": "update"}), encoding.pack({"d": 1, "s": 2, "p": 3, "g": 4})])

    def bad_sig(domain: Domain, signer: bytes, record: dict[str, Any]) -> bytes:
        return Envelope(domain.value, signer, encoding.pack(record), rng.randbytes(64)).to_bytes()

    def update_junk(i: int) -> bytes:
        victim = rng.choice(trainer_keys)
        return [
            randoms,
            lambda: bad_sig(Domain.UPDATE, victim, {"job_id": topics.job_id, "round": 1}),  # forged signature
            lambda: seal(MALLORY, Domain.HEARTBEAT, {"x": 1}).to_bytes(),  # right signature, wrong domain
            lambda: seal(MALLORY, Domain.UPDATE, {"round": "one"}).to_bytes(),  # signed nonsense
            lambda: Envelope("update", victim[:31], b"", bytes(64)).to_bytes(),  # short key
        ][i % 5]()

    def liveness_junk(i: int) -> tuple[str, bytes]:
        victim = trainer_keys[i % len(trainer_keys)]
        topic = topics.liveness(network_id(victim) if i % 2 else f"junk-{rng.randrange(10**6)}")
        offline = {"node": "x", "status": "offline", "ts": time.time() + 1e6, "seq": 0, "session": bytes(16),
                   "info": {}}
        return topic, [
            randoms,
            lambda: bad_sig(Domain.HEARTBEAT, victim, offline),  # "trainer X is offline", not signed by X
            lambda: seal(MALLORY, Domain.HEARTBEAT, {**offline, "status": "zombie"}).to_bytes(),
            lambda: seal(MALLORY, Domain.UPDATE, offline).to_bytes(),
        ][i % 4]()

    def coordinator_junk(domain: Domain, i: int) -> bytes:
        return [
            randoms,
            lambda: bad_sig(domain, coordinator_key, {"job_id": topics.job_id, "round": 10**6, "total_rounds": 1}),
            lambda: seal(MALLORY, domain, {"job_id": topics.job_id, "round": 10**6}).to_bytes(),
        ][i % 3]()

    oversized = rng.randbytes(BUS_CAP + 1024)
    out: list[tuple[str, bytes]] = []
    out += [(topics.updates, oversized if i < BUS_OVERSIZED else update_junk(i)) for i in range(BUS_UPDATES)]
    out += [liveness_junk(i) for i in range(BUS_LIVENESS)]
    out += [(topics.announce, oversized if i < BUS_OVERSIZED else coordinator_junk(Domain.ANNOUNCEMENT, i))
            for i in range(BUS_ANNOUNCE)]
    out += [(topics.committed, coordinator_junk(Domain.COMMITTED, i)) for i in range(BUS_COMMITTED)]
    return out


# -- senders ----------------------------------------------------------------------------


async def send_udp(targets: list[tuple[tuple[str, int], list[bytes]]], seconds: float) -> None:
    """Send every target's datagrams, interleaved and paced over about ``seconds``."""
    ticks = max(1, int(seconds / 0.02))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        for tick in range(ticks):
            for address, datagrams in targets:
                per_tick = -(-len(datagrams) // ticks)
                for datagram in datagrams[tick * per_tick:(tick + 1) * per_tick]:
                    for _ in range(100):
                        try:
                            sock.sendto(datagram, address)
                            break
                        except BlockingIOError:  # our own send buffer is full: wait a moment
                            await asyncio.sleep(0.005)
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)  # keep the socket until the replies to our STOREs are out


async def send_blob_requests(address: tuple[str, int], requests: list[tuple[bytes, bool]], concurrency: int) -> None:
    gate = asyncio.Semaphore(concurrency)  # below the server's 64-client cap: this is junk, not a capacity test

    async def one(data: bytes, read_answer: bool) -> None:
        async with gate:
            reader, writer = await asyncio.open_connection(*address)
            try:
                if data:
                    writer.write(data)
                    await writer.drain()
                if read_answer:  # the refusal, then EOF (or a reset: the server left our extra bytes unread)
                    with contextlib.suppress(ConnectionError):
                        await asyncio.wait_for(reader.read(), 15)
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()

    await asyncio.gather(*(one(d, r) for d, r in requests))


async def stall_blob_clients(address: tuple[str, int], n: int) -> None:
    """Open ``n`` connections, send two bytes, and wait for the server to hang up on us."""
    conns = [await asyncio.open_connection(*address) for _ in range(n)]
    for _, writer in conns:
        writer.write(b"\x00\x00")
    await asyncio.gather(*(asyncio.wait_for(reader.read(), 30) for reader, _ in conns))
    for _, writer in conns:
        writer.close()


async def send_bus(url: str, messages: list[tuple[str, bytes]], seconds: float) -> None:
    async with BusClient(url, f"flooder-{os.getpid()}", max_payload=1024 * 1024) as bus:
        bursts = [messages[i:i + 100] for i in range(0, len(messages), 100)]
        rng = random.Random(7)
        rng.shuffle(bursts)  # topics interleaved, each burst of 100 at once
        for burst in bursts:
            await asyncio.gather(*(bus.publish(topic, payload, retain=False) for topic, payload in burst))
            await asyncio.sleep(seconds / len(bursts))


async def retained_after_flood(url: str, topics: Topics) -> dict[str, bytes]:
    """What a node joining now is handed on the retained topics."""
    got: dict[str, bytes] = {}
    async with BusClient(url, f"late-joiner-{os.getpid()}", max_payload=BUS_CAP) as bus:
        await bus.subscribe(topics.announce)
        await bus.subscribe(topics.committed)

        async def collect() -> None:
            async for topic, payload in bus.messages():
                got[topic] = payload
                if len(got) == 2:
                    return

        await asyncio.wait_for(collect(), 10)
    return got


async def flood(net: LocalNetwork, trainer_addrs: dict[str, tuple[str, int]]) -> Sent:
    rng = random.Random(20240611)
    job = net.config.job_id
    topics = Topics(job)
    coordinator_key = net.config.coordinator_public_key
    trainer_keys = [Identity.load_or_create(net.trainer_dir(n)).public_key for n in net.trainer_names]
    coordinator = ("127.0.0.1", net.coordinator_port)
    sent = Sent()

    udp_targets = []
    for name, address, n in [("coordinator", coordinator, UDP_TO_COORDINATOR),
                             *((t, trainer_addrs[t], UDP_TO_EACH_TRAINER) for t in net.trainer_names)]:
        datagrams, stores = udp_garbage(rng, n, coordinator_key, trainer_keys, job)
        udp_targets.append((address, datagrams))
        sent.udp_dropped[name], sent.udp_refused[name] = n - stores, stores
    blob_targets = [(coordinator, blob_garbage(rng, BLOB_TO_COORDINATOR))]
    sent.blob["coordinator"] = BLOB_TO_COORDINATOR + STALLED_BLOB_CLIENTS
    for name in net.trainer_names:
        blob_targets.append((trainer_addrs[name], blob_garbage(rng, BLOB_TO_EACH_TRAINER)))
        sent.blob[name] = BLOB_TO_EACH_TRAINER
    messages = bus_garbage(rng, topics, coordinator_key, trainer_keys)
    for topic, _ in messages:
        kind = topic.rsplit("/", 2)[-2] if "/liveness/" in topic else topic.rsplit("/", 1)[-1]
        sent.bus[kind] = sent.bus.get(kind, 0) + 1

    started = time.monotonic()
    await asyncio.gather(
        send_udp(udp_targets, seconds=8.0),
        stall_blob_clients(coordinator, STALLED_BLOB_CLIENTS),
        *(send_blob_requests(addr, reqs, concurrency=8) for addr, reqs in blob_targets),
        send_bus(net.config.network.mqtt_url, messages, seconds=6.0),
    )
    sent.seconds = time.monotonic() - started
    return sent


# -- reading the nodes -------------------------------------------------------------------------


def total(counter: dict[str, int] | None) -> int:
    return sum((counter or {}).values())


def metrics_after(data_dir: Path, after: float, timeout: float = 15.0,
                  settled: Callable[[dict], bool] = lambda m: True) -> dict:
    """The node's metrics as written after wall time ``after`` and once ``settled`` holds."""
    deadline = time.monotonic() + timeout
    m = None
    while time.monotonic() < deadline:
        m = read_metrics(data_dir)
        if m is not None and m.get("written_at", 0) > after and settled(m):
            return m
        time.sleep(0.2)
    assert m is not None, f"no metrics.json in {data_dir}"
    return m


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


@pytest.fixture
def network(tmp_path):
    net = LocalNetwork(tmp_path / "net", trainers=3, rounds=0, local_epochs=1, federated={"round_timeout": 20.0})
    try:
        yield net
    finally:
        net.stop_all()


def test_flood_of_garbage_leaves_every_node_up_and_counting(network: LocalNetwork) -> None:
    net = network
    net.start_all()
    wait_for(net, lambda s: s["rounds_committed"] >= 2, 60, "two rounds before the flood")
    trainer_dirs = {name: net.trainer_dir(name) for name in net.trainer_names}
    now = time.time()
    coord_before = metrics_after(net.coordinator_dir, now)
    trainers_before = {name: metrics_after(d, now) for name, d in trainer_dirs.items()}
    trainer_addrs = {}
    for name, m in trainers_before.items():
        host, port = m["address"].rsplit(":", 1)
        trainer_addrs[name] = (host, int(port))
    status_before = net.status()
    rejections_before = len(status_before["rejected_updates"])

    flood_started = time.time()
    sent = asyncio.run(flood(net, trainer_addrs))
    flood_ended = time.time()
    committed_during = {r["round"] for r in net.status()["rounds"]
                        if flood_started <= r["committed_at"] <= flood_ended}

    assert net.dead() == {}, {n: net.log_tail(n) for n in net.dead()}
    # Rounds go on: some committed during the flood and more after it.
    at_end = net.status()["rounds_committed"]
    status = wait_for(net, lambda s: s["rounds_committed"] >= at_end + 3 and s, 60, "rounds after the flood")
    retained = asyncio.run(retained_after_flood(net.config.network.mqtt_url, Topics(net.config.job_id)))

    n_updates = sent.bus["updates"] - BUS_OVERSIZED
    coord = metrics_after(
        net.coordinator_dir, flood_ended + 1.0,
        settled=lambda m: total(m["updates"]["rejected"]) - total(coord_before["updates"]["rejected"]) >= n_updates,
    )
    trainers = {name: metrics_after(d, flood_ended + 1.0) for name, d in trainer_dirs.items()}
    assert net.dead() == {}, {n: net.log_tail(n) for n in net.dead()}

    # -- every honest update accepted in every round; junk never attributed to anyone ----------
    honest = {Identity.load_or_create(d).public_key for d in trainer_dirs.values()}
    assert len(committed_during) >= 1, "no round committed while the flood ran"
    assert [r["round"] for r in status["rounds"]] == list(range(1, status["rounds_committed"] + 1))
    db = sqlite3.connect(f"file:{net.coordinator_dir / DB_NAME}?mode=ro", uri=True)
    try:
        per_round = {}
        for rnd, key in db.execute("SELECT round, node_key FROM updates"):
            per_round.setdefault(rnd, set()).add(key)
    finally:
        db.close()
    assert all(per_round.get(r["round"]) == honest for r in status["rounds"]), per_round
    junk_rows = status["rejected_updates"][rejections_before:]
    assert all(row["key"] is None and row["reason"] in {"malformed", "bad_signature"} for row in junk_rows), \
        {(r["key"], r["reason"]) for r in junk_rows}
    assert not any(row["key"] in {k.hex() for k in honest} for row in status["rejected_updates"])
    # anonymous junk is capped per round in the database; the rest is only counted
    rows_per_round: dict[int, int] = {}
    for row in junk_rows:
        rows_per_round[row["round"]] = rows_per_round.get(row["round"], 0) + 1
    assert max(rows_per_round.values(), default=0) <= MAX_UNATTRIBUTED_RECORDED, rows_per_round
    assert len(junk_rows) < n_updates, (len(junk_rows), n_updates)

    # -- the coordinator counted what it dropped, by reason ----------------------------------------
    dht_dropped = delta(coord["dht"]["dropped"], coord_before["dht"]["dropped"])
    dht_refused = delta(coord["dht"]["refused"], coord_before["dht"]["refused"])
    blob_bad = delta(coord["blob_server"]["bad_requests"], coord_before["blob_server"]["bad_requests"])
    rejected = delta(coord["updates"]["rejected"], coord_before["updates"]["rejected"])
    live_dropped = delta(coord["liveness"]["dropped"], coord_before["liveness"]["dropped"])
    oversized = coord["bus"]["dropped_oversized"] - coord_before["bus"]["dropped_oversized"]
    rss_before, rss_after = coord_before["rss_bytes"], coord["rss_bytes"]
    report = {
        "flood_seconds": round(sent.seconds, 1), "rounds_during_flood": len(committed_during),
        "udp_sent": {"dropped": sent.udp_dropped["coordinator"], "refused": sent.udp_refused["coordinator"]},
        "dht_dropped": dht_dropped, "dht_refused": dht_refused,
        "blob_sent": sent.blob["coordinator"], "blob_bad_requests": blob_bad,
        "bus_sent": sent.bus, "updates_rejected": rejected, "liveness_dropped": live_dropped,
        "bus_oversized_dropped": oversized, "junk_rows": len(junk_rows),
        "rss_mb": (round(rss_before / 2**20, 1), round(rss_after / 2**20, 1)),
        "peak_rss_mb": (round(coord_before["peak_rss_bytes"] / 2**20, 1), round(coord["peak_rss_bytes"] / 2**20, 1)),
    }
    print("\nflood report:", report)

    assert total(dht_dropped) >= UDP_MIN_COUNTED * sent.udp_dropped["coordinator"], report
    assert total(dht_refused) >= UDP_MIN_COUNTED * sent.udp_refused["coordinator"], report
    assert {"too_short", "unknown_kind", "bad_msgpack", "bad_shape", "unknown_rpc", "bad_arity", "bad_args",
            "unsolicited_response"} <= set(dht_dropped), report
    assert {"wrong_owner", "bad_signature", "bad_envelope"} <= set(dht_refused), report
    assert "handler_error" not in dht_dropped, report
    assert total(blob_bad) == sent.blob["coordinator"], report  # TCP: every request counted once
    assert {"truncated", "oversize", "bad_msgpack", "bad_shape", "bad_digest", "timeout"} <= set(blob_bad), report
    assert "internal_error" not in coord["blob_server"]["aborted"], report
    assert set(rejected) <= {"malformed", "bad_signature"} and total(rejected) >= n_updates, report
    assert total(live_dropped) >= sent.bus["liveness"], report
    assert oversized >= BUS_OVERSIZED, report
    assert rss_after < rss_before + RSS_GROWTH_BOUND, report

    # -- and so did every trainer --------------------------------------------------------------------
    for name in net.trainer_names:
        before, after = trainers_before[name], trainers[name]
        t_dropped = delta(after["dht"]["dropped"], before["dht"]["dropped"])
        t_refused = delta(after["dht"]["refused"], before["dht"]["refused"])
        t_blob = delta(after["blob_server"]["bad_requests"], before["blob_server"]["bad_requests"])
        t_msgs = delta(after["dropped_messages"], before["dropped_messages"])
        t_report = {"name": name, "dht_dropped": total(t_dropped), "dht_refused": total(t_refused),
                    "blob_bad": total(t_blob), "dropped_messages": t_msgs,
                    "oversized": after["bus"]["dropped_oversized"] - before["bus"]["dropped_oversized"]}
        print("trainer report:", t_report)
        assert total(t_dropped) >= UDP_MIN_COUNTED * sent.udp_dropped[name], t_report
        assert total(t_refused) >= UDP_MIN_COUNTED * sent.udp_refused[name], t_report
        assert total(t_blob) == sent.blob[name], t_report
        # garbage announcements and commit notices are dropped, by topic; none is acted on
        assert t_msgs.get("bad_announce", 0) >= sent.bus["announce"] - BUS_OVERSIZED, t_report
        assert t_msgs.get("bad_committed", 0) >= sent.bus["committed"], t_report
        assert set(t_msgs) <= {"bad_announce", "bad_committed"}, t_report
        assert t_report["oversized"] >= BUS_OVERSIZED, t_report

    # -- nothing garbage is left retained: a node joining now gets the coordinator's signed records ---
    key = net.config.coordinator_public_key
    topics = Topics(net.config.job_id)
    RoundAnnouncement.open(parcel.unpack(retained[topics.announce], max_blob_bytes=BUS_CAP)[0], signer=key)
    RoundCommitted.open(retained[topics.committed], signer=key)
    assert net.dead() == {}
