"""Sealed state in a real run: coordinator, standby and trainers with a state key; a trainer killed
with SIGKILL resumes from its sealed checkpoint; no sealed file on disk holds a plaintext header;
the stopped nodes' state re-seals under a new key.

The coordinator and trainers read the key from ``--state-key-file``, the standby from
``PRIME_STATE_KEY`` (the same key, as it has the same ``node.key``).
"""

from __future__ import annotations

import signal
import sqlite3

import pytest

from prime.blobs.store import BlobStore
from prime.coordinator.sealed_state import bind_state_key
from prime.coordinator.store import CoordinatorStore
from prime.demo import LocalNetwork
from prime.rotation import SQLITE_MAGIC, rotate_data_dir
from prime.sealing import ENV_VAR, MAGIC, Sealer, write_key_file
from prime.telemetry import read_metrics
from prime.trainer.checkpoint import CheckpointStore
from tests.integration.netutil import wait_for

pytestmark = pytest.mark.slow

ROUNDS = 5
#: What a plaintext checkpoint, safetensors blob or database image would show.
PLAINTEXT_MARKERS = (b"PK\x03\x04", b"data.pkl", b'"dtype"', b'"shape"', b"__metadata__", SQLITE_MAGIC,
                     b"CREATE TABLE")


def test_sealed_run_resumes_a_killed_trainer_and_leaves_no_plaintext(tmp_path, monkeypatch):
    key = write_key_file(tmp_path / "state.key")
    monkeypatch.setenv(ENV_VAR, key.secret.hex())  # the standby's way to the key
    flag = ("--state-key-file", str(tmp_path / "state.key"))
    net = LocalNetwork(tmp_path / "net", trainers=2, rounds=ROUNDS, local_epochs=1,
                       federated={"round_timeout": 20.0, "min_clients": 2, "aggregation": {"name": "fedavgm"}})
    victim = net.trainer_names[1]
    try:
        net.start_infrastructure()
        net.start_coordinator(*flag)
        net.start_standby()
        for i in range(2):
            net.start_trainer(i, *flag)
        wait_for(net, lambda s: s["rounds_committed"] >= 2 and list((net.trainer_dir(victim) / "checkpoints")
                                                                     .glob("round-*.pt")), 90, "a sealed checkpoint")
        net.signal(victim, signal.SIGKILL)  # the next round waits for it (min_clients 2)
        net.start_trainer(1, *flag)
        wait_for(net, lambda s: "resumed from checkpoint round-" in net.log_tail(victim, 400), 90,
                 "the killed trainer to resume from its sealed checkpoint")
        status = wait_for(net, lambda s: s["rounds_committed"] >= ROUNDS and s, 90, "every round")
        mirrored = wait_for(net, lambda s: (LocalNetwork.status_of(net.standby_dir) or {}).get(
            "rounds_committed", 0) >= ROUNDS - 1, 30, "the standby to open and restore the sealed snapshots")
        assert mirrored
    finally:
        net.stop_all()
    assert status["ledger_valid"] and [r["round"] for r in status["rounds"]] == list(range(1, ROUNDS + 1))
    log = net.log_tail(victim, 400)
    assert f"round {ROUNDS}: trained" in log.split("resumed from checkpoint round-")[1]  # it trained on after
    assert all(r["participants"] == 2 for r in status["rounds"])

    sealed_files = 0
    for name in net.trainer_names:
        metrics = read_metrics(net.trainer_dir(name))["state"]
        assert metrics["sealed"] and metrics["key_id"] == key.key_id.hex() and metrics["mac_failures"] == 0
        for path in (net.trainer_dir(name) / "checkpoints").glob("*.pt"):
            raw = path.read_bytes()
            assert raw.startswith(MAGIC) and not [m for m in PLAINTEXT_MARKERS if m in raw], path
            sealed_files += 1
    for data_dir in (net.coordinator_dir, net.standby_dir):
        blobs = BlobStore(data_dir / "blobs")
        with sqlite3.connect(data_dir / "coordinator.sqlite") as db:
            states = [d for (d,) in db.execute("SELECT digest FROM server_state")]
        assert len(states) >= ROUNDS - 1
        for digest in states:  # the fedavgm momentum, sealed, and opens with the key
            assert Sealer(key).open(blobs.read_bytes(digest), digest)
        for path in blobs.objects_dir.glob("*/*"):
            raw = path.read_bytes()
            assert not raw.startswith(SQLITE_MAGIC), f"plaintext snapshot {path}"
            if raw.startswith(MAGIC):
                assert not [m for m in PLAINTEXT_MARKERS if m in raw], path
                sealed_files += 1
    assert sealed_files >= 2 + 2 * ROUNDS
    assert read_metrics(net.coordinator_dir)["state"]["files_sealed"] >= 2 * ROUNDS  # snapshots and server state

    # The stopped nodes' real state re-sealed under a new key, and read back with it.
    new = write_key_file(tmp_path / "new.key")
    for data_dir in (net.coordinator_dir, net.trainer_dir(victim)):
        assert rotate_data_dir(data_dir, key, new).resealed
    name, _ = CheckpointStore(net.trainer_dir(victim) / "checkpoints", sealer=Sealer(new)).latest_good()
    assert name.startswith("round-")
    store = CoordinatorStore(net.coordinator_dir / "coordinator.sqlite")
    bind_state_key(store, new)
    states = [d for (d,) in store.db.execute("SELECT digest FROM server_state")]
    store.close()
    blobs = BlobStore(net.coordinator_dir / "blobs")
    assert all(Sealer(new).open(blobs.read_bytes(d), d) for d in states)
