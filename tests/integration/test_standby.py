"""A standby coordinator takes over when the primary is SIGKILLed, from checkpoints it
mirrored through the DHT and blob service, with a higher term; no round is lost or redone.

Inline blobs are off here, so models and updates take the fetch-by-digest path.
"""

from __future__ import annotations

import signal

import pytest

from prime.demo import LocalNetwork
from prime.telemetry import read_metrics
from tests.integration.netutil import wait_for

pytestmark = pytest.mark.slow

ROUNDS = 6


def test_standby_takes_over_without_losing_or_redoing_a_round(tmp_path):
    net = LocalNetwork(tmp_path / "net", trainers=3, rounds=ROUNDS, local_epochs=1,
                       federated={"round_timeout": 20.0}, network={"inline_blob_max_bytes": 0})
    try:
        net.start_all()
        net.start_standby()
        wait_for(net, lambda s: s["rounds_committed"] >= 2, 90, "two rounds")
        wait_for(net, lambda s: (LocalNetwork.status_of(net.standby_dir) or {}).get("rounds_committed", 0) >= 2,
                 30, "the standby to mirror two rounds")
        net.signal("coordinator", signal.SIGKILL)
        status = wait_for(net, lambda s: s["rounds_committed"] >= ROUNDS and s, 120, "all rounds after takeover")
        primary = LocalNetwork.status_of(net.coordinator_dir)
    finally:
        net.stop_all()

    standby_log = net.log_tail("standby", 400)
    assert "taking over" in standby_log, standby_log
    assert [r["round"] for r in status["rounds"]] == list(range(1, ROUNDS + 1))
    assert [v["version"] for v in status["model_versions"]] == list(range(ROUNDS + 1))
    # Every round the dead primary committed is the very same commit in the standby's history.
    for theirs, ours in zip(primary["model_versions"], status["model_versions"]):
        assert theirs == ours
    assert status["ledger_valid"]
    assert round(sum(status["rewards"].values()), 6) == round(100.0 * ROUNDS, 6)
    for name in net.trainer_names:
        assert "inline" not in read_metrics(net.trainer_dir(name))["model_fetch"]
    assert sum(read_metrics(net.trainer_dir(n))["model_fetch"]["from_origin"] for n in net.trainer_names) >= ROUNDS
    assert status["rejected_updates"] == [] or {r["reason"] for r in status["rejected_updates"]} <= {"wrong_term"}
