"""Compressed both ways, end to end: top-k updates with error feedback, a bf16 model broadcast.

Real processes over loopback (``LocalNetwork``): the records name the codec, the coordinator
folds the updates into FedAvg from their encoded form, the model still learns, and a trainer
killed with SIGKILL comes back with the residual it had not sent yet.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sqlite3

import pytest

from prime import codecs
from prime.blobs.store import BlobStore
from prime.core.identity import Identity
from prime.core.records import UpdateRecord, dht_update_name
from prime.demo import LocalNetwork
from prime.dht.node import DHTNode
from prime.telemetry import read_metrics
from prime.trainer.checkpoint import CheckpointStore
from tests.integration.netutil import wait_for

pytestmark = pytest.mark.slow


def test_topk_updates_and_bf16_model_train_and_a_restarted_trainer_keeps_its_residual(tmp_path):
    net = LocalNetwork(tmp_path / "net", trainers=2, rounds=0, local_epochs=1,
                       federated={"min_clients": 1, "round_timeout": 20.0, "aggregation": {"name": "fedavg"}},
                       compression={"update": {"name": "topk", "fraction": 0.1}, "model": "bf16"})
    name = net.trainer_names[0]
    trained = lambda: (read_metrics(net.trainer_dir(name)) or {}).get("rounds_trained", 0)  # noqa: E731
    try:
        net.start_all()
        wait_for(net, lambda s: trained() >= 2, 60, f"{name} to train two rounds")
        net.signal(name, signal.SIGKILL)
        saved = CheckpointStore(net.trainer_dir(name) / "checkpoints").latest_good()
        before = trained()
        net.start_trainer(0)
        wait_for(net, lambda s: trained() > before, 60, f"the restarted {name} to train again")
        status = wait_for(net, lambda s: s["rounds_committed"] >= 8 and s, 60, "8 rounds")
        asyncio.run(_check_records(net, status["rounds_committed"]))
    finally:
        net.stop_all()

    # The killed trainer's checkpoint held a residual, and the restarted process restored all of it.
    assert saved is not None and saved[1]["codec_residual"], saved
    restored = re.search(r"restored the error-feedback residual \((\d+) of (\d+) tensors, norm ([0-9.e+-]+)\)",
                         net.log_tail(name, 400))
    assert restored and restored[1] == restored[2] == str(len(saved[1]["codec_residual"])) and float(restored[3]) > 0
    # The coordinator sent the model as bf16 (what it commits stays fp32).
    assert "goes out bf16 as" in net.log_tail("coordinator", 400)
    # The updates it kept are top-k blobs; every round committed; the model learned.
    db = sqlite3.connect(net.coordinator_dir / "coordinator.sqlite")
    try:
        kept = [d for (d,) in db.execute("SELECT digest FROM updates")]
    finally:
        db.close()
    blobs = BlobStore(net.coordinator_dir / "blobs")
    assert kept and all(codecs.open_update(blobs.read_bytes(d), max_bytes=1 << 24).codec == codecs.TopK(fraction=0.1)
                        for d in kept)
    assert {r["reason"] for r in status["rejected_updates"]} <= {"blob_unavailable", "duplicate"}
    assert [r["round"] for r in status["rounds"]] == list(range(1, status["rounds_committed"] + 1))
    assert status["rounds"][-1]["accuracy"] > 0.8, [r["accuracy"] for r in status["rounds"]]


async def _check_records(net: LocalNetwork, round_number: int) -> None:
    """The trainers' signed update records name the codec."""
    node = await DHTNode.create(bootstrap=[("127.0.0.1", net.dht_port)])
    try:
        for trainer in net.trainer_names[1:]:
            key = Identity.load_or_create(net.trainer_dir(trainer)).public_key
            value = await node.get(key, dht_update_name(net.config.job_id, round_number))
            assert value is not None, f"{trainer}'s round-{round_number} record not found in the DHT"
            record, _ = UpdateRecord.open(value["update"], signer=key)
            assert record.codec == "topk"
    finally:
        await node.close()
