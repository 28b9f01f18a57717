"""Crashes of real processes: a dead trainer is not waited for, and a coordinator killed
mid-round reuses the updates it had already verified instead of refetching them.

A trainer started with ``--round 99`` heartbeats (so it is live and gets selected) but
never trains before round 99: it makes a round wait on demand, deterministically.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from prime.demo import LocalNetwork
from tests.integration.netutil import wait_for

pytestmark = pytest.mark.slow


def test_dead_selected_trainer_is_not_waited_for(tmp_path):
    net = LocalNetwork(tmp_path / "net", trainers=3, rounds=2, local_epochs=1,
                       federated={"min_clients": 2, "round_timeout": 120.0})
    try:
        _start_trainers_then_coordinator(net)
        wait_for(net, lambda s: _announced(net), 60, "round 1 announced")
        time.sleep(3)  # honest trainers deliver; the round now waits only on trainer-003
        assert (net.status() or {}).get("rounds_committed", 0) == 0, "round closed without waiting"
        killed = time.monotonic()
        net.signal(net.trainer_names[2], signal.SIGKILL)  # its Last Will tells the coordinator
        status = wait_for(net, lambda s: s["rounds_committed"] >= 1 and s, 30, "round 1 after the kill")
        assert time.monotonic() - killed < 15  # seconds, not the 120 s deadline
        assert status["rounds"][0]["participants"] == 2
    finally:
        net.stop_all()


def test_coordinator_killed_mid_round_reuses_verified_updates(tmp_path):
    net = LocalNetwork(tmp_path / "net", trainers=3, rounds=1, local_epochs=1,
                       federated={"min_clients": 3, "round_timeout": 120.0})
    first, second, third = net.trainer_names
    try:
        _start_trainers_then_coordinator(net)
        wait_for(net, lambda s: _pending_updates(net) >= 2, 60, "two verified updates pending")
        # Everyone who delivered dies, then the coordinator: their updates exist only in its store.
        for name in (first, second, "coordinator", third):
            net.signal(name, signal.SIGKILL)
        net.start_coordinator()
        net.start_trainer(2)  # comes back normally and trains round 1
        status = wait_for(net, lambda s: s["rounds_committed"] >= 1 and s, 90, "round 1 after the restart")
    finally:
        net.stop_all()
    assert status["rounds"][0]["participants"] == 3
    assert set(status["measured_scores"]) == {first, second, third}  # all three updates committed
    assert "via recovered" in net.log_tail("coordinator", 200)
    assert status["rejected_updates"] == []


def _start_trainers_then_coordinator(net: LocalNetwork) -> None:
    """Trainers 1 and 2 normal, trainer 3 silent (``--round 99``); all up before the coordinator
    starts, so its first selection (after its start-up pause) includes all three."""
    from prime.telemetry import read_metrics

    net.start_infrastructure()
    net.start_trainer(0)
    net.start_trainer(1)
    net.start_trainer(2, "--round", "99")
    deadline = time.monotonic() + 60
    while not all(read_metrics(net.trainer_dir(n)) for n in net.trainer_names):
        assert time.monotonic() < deadline, "trainers did not start"
        time.sleep(0.2)
    net.start_coordinator()


def _announced(net: LocalNetwork) -> bool:
    return "round 1 announced" in net.log_tail("coordinator", 50)


def _pending_updates(net: LocalNetwork) -> int:
    import sqlite3

    try:
        db = sqlite3.connect(f"file:{net.coordinator_dir / 'coordinator.sqlite'}?mode=ro", uri=True)
        try:
            return db.execute("SELECT COUNT(*) FROM pending_updates").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def test_restarted_trainer_resumes_from_its_checkpoint_with_the_same_key(tmp_path):
    from prime.core.identity import Identity
    from prime.telemetry import read_metrics

    net = LocalNetwork(tmp_path / "net", trainers=3, rounds=0, local_epochs=1,
                       federated={"min_clients": 2, "round_timeout": 30.0})
    name = net.trainer_names[0]
    key_before = Identity.load_or_create(net.trainer_dir(name)).public_key
    try:
        net.start_all()
        wait_for(net, lambda s: (read_metrics(net.trainer_dir(name)) or {}).get("rounds_trained", 0) >= 2
                 and os.path.exists(net.trainer_dir(name) / "checkpoints"), 90, f"{name} to train two rounds")
        net.signal(name, signal.SIGKILL)
        epochs_before = read_metrics(net.trainer_dir(name))["current_epoch"]
        net.start_trainer(0)
        trained_again = lambda s: (read_metrics(net.trainer_dir(name)) or {}).get("current_epoch", 0) > epochs_before  # noqa: E731
        status = wait_for(net, lambda s: trained_again(s) and s, 90, "the restarted trainer to train again")
        status = wait_for(net, lambda s: s["rounds_committed"] > status["rounds_committed"] and s, 30, "one more round")
    finally:
        net.stop_all()
    log = net.log_tail(name, 400)
    assert "resumed from checkpoint round-" in log, log
    assert Identity.load_or_create(net.trainer_dir(name)).public_key == key_before
    final = read_metrics(net.trainer_dir(name))
    assert final["public_key"] == key_before.hex()
    assert final["current_epoch"] > epochs_before > 0  # optimizer and data position continued
    assert name in status["rewards"] and len(status["rewards"]) == 3  # same key: same account
    # Only the killed trainer may have an update refused: one whose blob died with it, or a retrained duplicate.
    assert {r["node"] for r in status["rejected_updates"]} <= {name}
    assert {r["reason"] for r in status["rejected_updates"]} <= {"blob_unavailable", "duplicate"}
