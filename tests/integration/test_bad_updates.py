"""Bad input against real processes: each forged or broken update is refused with a
reason that shows up in ``status``, and the round still commits with the honest ones.

An in-test attacker ("mallory", an admitted key that heartbeats and so gets selected)
sends three updates for the round it is selected in: one signed by a key that was never
admitted ("eve"), one that claims mallory as signer but carries eve's signature, and
one correctly signed by mallory whose blob is tampered after its digest was taken.
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
from prime.core import encoding, tensors
from prime.core.envelope import Envelope
from prime.core.identity import Identity
from prime.core.models import build_model
from prime.core.records import RoundAnnouncement, UpdateRecord
from prime.demo import LocalNetwork
from prime.dht.blobservice import BlobServer
from prime.dht.blobstore import BlobStore
from tests.integration.netutil import wait_for

pytestmark = pytest.mark.slow


def test_forged_unknown_and_tampered_updates_are_refused(tmp_path):
    mallory, eve = Identity.generate("mallory"), Identity.generate("eve")
    net = LocalNetwork(tmp_path / "net", trainers=3, rounds=2, local_epochs=1,
                       extra_admitted={"mallory": mallory.public_key_hex}, federated={"round_timeout": 5.0})
    try:
        net.start_all()
        attacked_round = asyncio.run(_attack(net, mallory, eve, tmp_path / "mallory"))
        status = wait_for(net, lambda s: s["rounds_committed"] >= attacked_round and s, 60, "the attacked round")
    finally:
        net.stop_all()

    reasons = {(r["round"], r["reason"]) for r in status["rejected_updates"]}
    assert {(attacked_round, "unknown_key"), (attacked_round, "bad_signature"),
            (attacked_round, "blob_rejected")} <= reasons, status["rejected_updates"]
    committed = status["rounds"][attacked_round - 1]
    assert committed["participants"] == 3  # the honest trainers, nobody else

    honest = {Identity.load_or_create(net.trainer_dir(n)).public_key for n in net.trainer_names}
    db = sqlite3.connect(net.coordinator_dir / "coordinator.sqlite")
    credited = {row[0] for row in db.execute("SELECT node_key FROM ledger")}
    assert credited == honest  # the attacker earned nothing
    assert mallory.public_key not in {row[0] for row in db.execute("SELECT node_key FROM updates")}


async def _attack(net: LocalNetwork, mallory: Identity, eve: Identity, workdir) -> int:
    config = net.config
    topics = Topics(config.job_id)
    heartbeat = Heartbeat(mallory, topics, interval=0.5, name="mallory")
    store = BlobStore(workdir / "blobs")
    server = await BlobServer.start(store, max_blob_bytes=config.network.max_message_size)
    deadline = time.monotonic() + 60
    try:
        async with BusClient(config.network.mqtt_url, "mallory", will=heartbeat.will) as bus:
            heartbeat.start(bus)
            await bus.subscribe(topics.announce)
            async for _, payload in bus.messages():
                assert time.monotonic() < deadline, "mallory was never selected"
                ann, _ = RoundAnnouncement.open(payload, signer=config.coordinator_public_key)
                if mallory.public_key in ann.selected:
                    await _send_bad_updates(bus, topics, ann, store, server, mallory, eve, config)
                    await heartbeat.stop()
                    return ann.round
    finally:
        await server.close()
    raise AssertionError("announcement stream ended")


async def _send_bad_updates(bus, topics, ann, store, server, mallory, eve, config) -> None:
    model = build_model(config.model)
    blob = tensors.encode_state({k: torch.zeros_like(v) for k, v in model.state_dict().items()})
    digest = store.put_bytes(blob)
    host, port = server.address

    def record(name: str) -> UpdateRecord:
        return UpdateRecord(job_id=config.job_id, round=ann.round, model_version=ann.model_version, node_name=name,
                            blob_digest=digest, blob_size=len(blob), num_samples=100, metrics={},
                            providers=[f"{host}:{port}"], issued=time.time())

    # 1. A well-formed update signed by a key the job never admitted.
    await bus.publish(topics.updates, record("eve").seal(eve).to_bytes())
    # 2. Claims to be from mallory (an admitted key) but the signature is eve's.
    honest_looking = record("mallory").seal(eve)
    forged = Envelope(honest_looking.domain, mallory.public_key, honest_looking.payload, honest_looking.signature)
    await bus.publish(topics.updates, forged.to_bytes())
    # 3. Correctly signed by mallory, but the bytes served no longer match the signed digest.
    path = store.path(digest)
    path.chmod(0o644)
    tampered = bytearray(path.read_bytes())
    tampered[-1] ^= 0xFF
    path.write_bytes(bytes(tampered))
    await bus.publish(topics.updates, record("mallory").seal(mallory).to_bytes())
    await asyncio.sleep(1.0)  # let the coordinator fetch the tampered blob from our server
    assert encoding.unpack(forged.to_bytes())["s"] == mallory.public_key
