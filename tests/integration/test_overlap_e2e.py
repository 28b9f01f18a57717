"""An overlapped DiLoCo job end to end: real processes, digits, H = 100 inner steps per round.

Each trainer trains round r+1's block while round r is aggregated and committed; the coordinator
accepts every such update (all the usual checks), and the rounds commit. A trainer killed with
kill -9 mid-overlap comes back from its checkpoint, trains one round from the announced model
(the non-overlapped path) and overlaps again from there.
"""

from __future__ import annotations

import signal

import pytest

from prime.demo import LocalNetwork
from prime.telemetry import read_metrics
from tests.integration.netutil import wait_for

pytestmark = pytest.mark.slow

ROUNDS = 8
JOB = dict(federated={"aggregation": {"name": "fedavg", "outer": "diloco"}, "local_steps": 100, "overlap": True,
                      "min_clients": 3, "round_timeout": 30.0})


def test_overlapped_rounds_commit_and_survive_a_trainer_kill(tmp_path):
    net = LocalNetwork(tmp_path / "net", trainers=3, rounds=ROUNDS, **JOB)
    try:
        net.start_all()
        wait_for(net, lambda s: s["rounds_committed"] >= 2, 60, "two rounds")
        victim = net.trainer_names[0]
        net.signal(victim, signal.SIGKILL)  # mid-overlap: it sent round 2 from a block trained ahead, and trains on
        net.start_trainer(0)
        status = wait_for(net, lambda s: s["rounds_committed"] >= ROUNDS and s, 90, f"{ROUNDS} rounds")
    finally:
        net.stop_all()
    # Only the killed trainer may have a refusal: killed after publishing a block but before its
    # checkpoint, it retrains that round after the restart and its second update is a `duplicate`.
    assert {(r["node"], r["reason"]) for r in status["rejected_updates"]} <= {(victim, "duplicate")}, status
    assert [r["round"] for r in status["rounds"]] == list(range(1, ROUNDS + 1))
    assert status["rounds"][-1]["participants"] == 3
    assert status["rounds"][-1]["accuracy"] > status["rounds"][0]["accuracy"]

    for name in net.trainer_names[1:]:  # never restarted: every round after the first sent a block trained ahead
        m = read_metrics(net.trainer_dir(name))
        assert m["overlap"]["blocks_sent"] >= ROUNDS - 2, m["overlap"]
        rounds = m["utilization"]["rounds"]
        assert rounds[0]["overlapped"] is False and all(r["overlapped"] for r in rounds[1:])
        assert 0 < m["utilization"]["fraction"] <= 1
    log = net.log_tail(victim, 200)
    assert "resumed from checkpoint" in log, log
    restarted = read_metrics(net.trainer_dir(victim))["utilization"]["rounds"]
    assert restarted[0]["overlapped"] is False and restarted[-1]["overlapped"], restarted
