"""One trainer node as two ranks under a real ``torchrun`` (Gloo on CPU), in a real network round.

``trainer-002`` runs as ``torchrun --nproc-per-node 2 -m prime.trainer.cli``: rank 0 owns the
node's key, bus, DHT peer, blobs and checkpoints; rank 1 only trains its half of every
batch. The test recomputes, in one process, what that node should have sent (same global
model, same shard, same global batches) and compares it with the update the coordinator
committed. Round 2 runs after every process was restarted, so it also shows that the
checkpoint restored both ranks (weights, SGD momentum, data position).

Tolerance: the two ranks reduce gradients in another order than one process sums them, so
fp32 rounding differs; 1e-6 absolute plus 1e-4 relative is three orders of magnitude above
what that costs here (~1e-8) and far below what a wrong batch or lost momentum costs (~1e-3).
"""

from __future__ import annotations

import sqlite3

import pytest
import torch

from prime.core import tensors
from prime.core.config import dump_toml, parse_config
from prime.core.identity import Identity
from prime.demo import LocalNetwork
from prime.blobs.store import BlobStore
from prime.tasks import task_of
from prime.trainer.engine import LocalEngine, LocalWork
from tests.integration.netutil import wait_for

pytestmark = pytest.mark.slow

RANKS_NODE = 1  # index of trainer-002, the torchrun node
JOB = {
    "federated": {"local_steps": 3, "round_timeout": 90.0},
    "training": {"batch_size": 32, "learning_rate": 0.1, "optimizer": {"name": "sgd", "momentum": 0.9}},
}


def test_torchrun_node_sends_what_one_process_computes(tmp_path):
    net = LocalNetwork(tmp_path / "net", trainers=2, rounds=1, **JOB)
    name = net.trainer_names[RANKS_NODE]
    try:
        net.start_infrastructure()
        net.start_coordinator()
        net.start_trainer(0)
        net.start_trainer(RANKS_NODE, ranks=2)
        wait_for(net, lambda s: s["rounds_committed"] >= 1, 120, "round 1 with the torchrun node")
        _wait_exit(net, name)
        # Round 2 after everything restarts: the torchrun node resumes both ranks from its checkpoint.
        net.stop_all()
        data = net.config.model_dump(mode="json")
        net.config = parse_config({**data, "federated": {**data["federated"], "rounds": 2}}, "job.toml")
        net.config_path.write_text(dump_toml(net.config))
        net.start_infrastructure()
        net.start_coordinator()
        net.start_trainer(0)
        net.start_trainer(RANKS_NODE, ranks=2)
        status = wait_for(net, lambda s: s["rounds_committed"] >= 2 and s, 120, "round 2 after the restart")
        _wait_exit(net, name)
    finally:
        net.stop_all()
    assert status["rejected_updates"] == []
    assert "resumed from checkpoint round-000001" in net.log_tail(name, 400)

    key = Identity.load_or_create(net.trainer_dir(name)).public_key
    versions = {v["version"]: v["digest"] for v in status["model_versions"]}
    db = sqlite3.connect(net.coordinator_dir / "coordinator.sqlite")
    sent = dict(db.execute("SELECT round, digest FROM updates WHERE node_key=?", (key,)).fetchall())
    db.close()
    coordinator_blobs, node_blobs = BlobStore(net.coordinator_dir / "blobs"), BlobStore(net.trainer_dir(name) / "blobs")

    task = task_of(net.config)
    reference = LocalEngine(task, net.config.training)  # one process, the node's whole batches
    reference.use_shard(net.config.shard_of(key), net.config.num_shards)
    for round_number in (1, 2):
        start = tensors.decode_state(coordinator_blobs.read_bytes(versions[round_number - 1]), max_bytes=10**8)
        expected, _ = reference.train(start, LocalWork.of(net.config.federated))
        got = tensors.decode_state(node_blobs.read_bytes(sent[round_number]), max_bytes=10**8)
        assert set(got) == set(expected)
        for k in expected:
            torch.testing.assert_close(got[k], expected[k], rtol=1e-4, atol=1e-6,
                                       msg=lambda m, k=k, r=round_number: f"round {r}, {k}: {m}")
        assert any(float(v.abs().max()) > 1e-3 for v in got.values())  # a real update, not zeros


def _wait_exit(net: LocalNetwork, name: str, timeout: float = 30.0) -> None:
    """The node leaves when it sees the job's last commit; torchrun returns once every rank did."""
    proc = net.procs[name]
    try:
        assert proc.wait(timeout=timeout) == 0, net.log_tail(name, 60)
    except Exception:
        raise AssertionError(f"{name} did not exit cleanly:\n{net.log_tail(name, 60)}") from None
