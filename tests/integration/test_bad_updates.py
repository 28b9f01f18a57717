"""Attacks against real processes: each is refused with its reason (visible in ``status``),
honest trainers' updates commit, and the attacker earns nothing.

A coordinator, a DHT node, a broker and three honest trainers run as processes. The
attacker runs in the test: "mallory" holds eight admitted keys (a refused trainer is no
longer waited for, so each attack that needs an admitted signer gets a key of its own and
the round stays open for all of them), heartbeats under each so they get selected, records
honest update notices as they pass on the bus, and in a later round sends, one after another:

- an update signed by a key the job never admitted ("eve")            → unknown_key
- an update claiming mallory as signer but carrying eve's signature   → bad_signature
- an honest trainer's update from round 1, replayed                   → replay
- an update whose record has already expired                          → expired
- an absurd sample count                                              → too_many_samples
- an update trained on another shard than the round assigned          → wrong_shard
- a delta with NaN                                                    → not_finite
- a delta of the wrong shape                                          → wrong_shape
- a delta with a huge L2 norm                                         → norm_too_large
- a blob over the size cap (the record lies about its size)           → oversize
- a blob tampered with after its digest was signed, served and inline  → tampered_blob
  (the inline copy is ignored for not matching the signed digest, then the fetched one refused)
"""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest
import torch

from prime.bus.client import BusClient
from prime.bus.liveness import Heartbeat
from prime.bus.topics import Topics
from prime.coordinator.status import read_status
from prime.telemetry import read_metrics
from prime.core import parcel, tensors
from prime.core.envelope import Envelope
from prime.core.identity import Identity
from prime.core.records import RoundAnnouncement, UpdateRecord
from prime.demo import LocalNetwork
from prime.blobs.service import BlobServer
from prime.blobs.store import BlobStore
from prime.tasks import task_of
from tests import factories
from tests.integration.netutil import wait_for

pytestmark = pytest.mark.slow

MAX_BLOB = 1_000_000


MALLORY_KEYS = 8


def test_attacks_are_refused_with_reasons_and_earn_nothing(tmp_path):
    mallory = [Identity.generate(f"mallory-{i}") for i in range(MALLORY_KEYS)]
    eve = Identity.generate("eve")
    net = LocalNetwork(
        tmp_path / "net", trainers=3, rounds=4, local_epochs=1,
        extra_admitted={key.name: key.public_key_hex for key in mallory},
        federated={"round_timeout": 15.0}, network={"max_message_size": MAX_BLOB},
        security={"max_samples_per_update": 10_000, "max_update_norm": 100.0},
    )
    try:
        net.start_all()
        attacked = asyncio.run(Mallory(net, mallory, eve, tmp_path / "mallory").run())
        status = wait_for(net, lambda s: s["rounds_committed"] >= 4 and s, 90, "all rounds")
    finally:
        net.stop_all()

    got = {r["reason"] for r in status["rejected_updates"] if r["round"] in (attacked, 1)}
    assert set(ATTACKS) <= got, status["rejected_updates"]
    assert status["rounds"][attacked - 1]["participants"] == 3  # the honest trainers, nobody else

    honest = {Identity.load_or_create(net.trainer_dir(n)).public_key for n in net.trainer_names}
    db = sqlite3.connect(net.coordinator_dir / "coordinator.sqlite")
    paid = {row[0] for row in db.execute("SELECT node_key FROM ledger WHERE kind='reward' AND amount > 0")}
    assert paid <= honest and paid  # the attacker earned nothing
    penalized = {row[0] for row in db.execute("SELECT node_key FROM ledger WHERE kind='penalty'")}
    assert penalized == {key.public_key for key in mallory[1:6]}  # its signed misbehaviour is on the record
    assert {row[0] for row in db.execute("SELECT node_key FROM updates")} == honest
    per_round = db.execute("SELECT round, COUNT(*) FROM updates GROUP BY round").fetchall()
    assert per_round == [(r, 3) for r in range(1, 5)]  # the replay was not credited twice
    assert read_metrics(net.coordinator_dir)["updates"]["bad_inline_blobs"] >= 1


ATTACKS = ["unknown_key", "bad_signature", "replay", "expired", "too_many_samples", "wrong_shard", "not_finite",
           "wrong_shape",
           "norm_too_large", "oversize", "tampered_blob"]


class Mallory:
    def __init__(self, net: LocalNetwork, keys: list[Identity], eve: Identity, workdir) -> None:
        self.net, self.keys, self.eve = net, keys, eve
        self.key = keys[0]
        self.config = net.config
        self.topics = Topics(self.config.job_id)
        self.heartbeats = [Heartbeat(key, self.topics, interval=0.5, name=key.name) for key in keys]
        self.store = BlobStore(workdir / "blobs")
        self.captured: dict[int, bytes] = {}  # round -> an honest trainer's sealed update

    async def run(self) -> int:
        self.server = await BlobServer.start(self.store, max_blob_bytes=10 * MAX_BLOB)
        deadline = time.monotonic() + 90
        try:
            async with BusClient(self.config.network.mqtt_url, "mallory") as bus:
                self.bus = bus
                await bus.subscribe(self.topics.announce)
                await bus.subscribe(self.topics.updates)
                async for topic, payload in bus.messages():
                    assert time.monotonic() < deadline, "mallory never got a round to attack"
                    envelope, _ = parcel.unpack(payload, max_blob_bytes=self.config.network.inline_blob_max_bytes)
                    if topic == self.topics.updates:
                        record, _ = UpdateRecord.open(envelope)
                        self.captured.setdefault(record.round, payload)
                        continue
                    ann, _ = RoundAnnouncement.open(envelope, signer=self.config.coordinator_public_key)
                    if ann.round == 2 and self.heartbeats[0]._task is None:
                        for heartbeat in self.heartbeats:  # become live so round 3 or 4 selects us
                            heartbeat.start(bus)
                    if (ann.round >= 3 and all(k.public_key in ann.selected for k in self.keys)
                            and 1 in self.captured):
                        await self.attack(ann)
                        for heartbeat in self.heartbeats:
                            await heartbeat.stop()
                        return ann.round
        finally:
            await self.server.close()
        raise AssertionError("announcement stream ended")

    async def attack(self, ann: RoundAnnouncement) -> None:
        shapes = {k: v.shape for k, v in task_of(self.config).build_model(0).state_dict().items()}
        zeros = {k: torch.zeros(s) for k, s in shapes.items()}
        good_blob = tensors.encode_state(zeros)

        # Refused on the record alone.
        await self.send(ann, "unknown_key", self.record(ann, good_blob, "eve").seal(self.eve).to_bytes())
        looks_honest = self.record(ann, good_blob, "mallory").seal(self.eve)
        forged = Envelope(looks_honest.domain, self.key.public_key, looks_honest.payload, looks_honest.signature)
        await self.send(ann, "bad_signature", forged.to_bytes())
        await self.send(ann, "replay", self.captured[1], round_of_reason=1)
        old = time.time() - 3600
        await self.send(ann, "expired", self.seal(self.record(ann, good_blob, issued=old, expires=old + 600), 0))
        await self.send(ann, "too_many_samples", self.seal(self.record(ann, good_blob, num_samples=10**9), 1))
        other_shard = (ann.shard_of(self.keys[2].public_key) + 1) % ann.num_shards
        await self.send(ann, "wrong_shard", self.seal(self.record(ann, good_blob, shard=other_shard), 2))

        # Refused after fetching and decoding the blob.
        nan = {**zeros, "head.bias": torch.full(shapes["head.bias"], float("nan"))}
        await self.send(ann, "not_finite", self.seal(self.record(ann, tensors.encode_state(nan)), 3))
        wrong = {**zeros, "head.bias": torch.zeros(3)}
        await self.send(ann, "wrong_shape", self.seal(self.record(ann, tensors.encode_state(wrong)), 4))
        huge = {**zeros, "head.weight": torch.full(shapes["head.weight"], 1e4)}
        await self.send(ann, "norm_too_large", self.seal(self.record(ann, tensors.encode_state(huge)), 5))
        big = tensors.encode_state({**zeros, "pad": torch.zeros(2 * MAX_BLOB // 4)})
        await self.send(ann, "oversize", self.seal(self.record(ann, big, blob_size=1000), 6))
        tampered = tensors.encode_state({**zeros, "head.bias": torch.ones(shapes["head.bias"])})
        record = self.record(ann, tampered)
        path = self.store.path(record.blob_digest)
        path.chmod(0o644)
        bad = tampered[:-1] + bytes([tampered[-1] ^ 0xFF])
        path.write_bytes(bad)
        await self.send(ann, "tampered_blob", parcel.pack(self.seal(record, 7), bad))

    def seal(self, record: UpdateRecord, key: int = 0) -> bytes:
        """Signed by mallory's ``key``-th identity (each attack with an admitted signer has its own)."""
        return record.seal(self.keys[key]).to_bytes()

    def record(self, ann: RoundAnnouncement, blob: bytes, name: str = "mallory", **changes) -> UpdateRecord:
        host, port = self.server.address
        now = time.time()
        fields = dict(job_id=self.config.job_id, term=ann.term, round=ann.round, model_version=ann.model_version, node_name=name,
                      blob_digest=self.store.put_bytes(blob), blob_size=len(blob), num_samples=100, metrics={},
                      providers=[f"{host}:{port}"], issued=now, expires=now + 600)
        return factories.update(**{**fields, **changes})

    async def send(self, ann: RoundAnnouncement, reason: str, payload: bytes, round_of_reason: int | None = None) -> None:
        """Publish one attack and wait until the coordinator has recorded its refusal."""
        expected_round = round_of_reason or ann.round
        await self.bus.publish(self.topics.updates, payload)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status = await asyncio.to_thread(read_status, self.net.coordinator_dir)
            if any(r["reason"] == reason and r["round"] == expected_round for r in status["rejected_updates"]):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{reason} attack was not refused: {status['rejected_updates']}")
