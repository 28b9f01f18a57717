"""A strategy's server state (FedAvgM's momentum) survives kill -9 of the coordinator and a standby
takeover exactly once: the job ends on the very model an uninterrupted run ends on.

Every part of a round is deterministic here (the same initial weights, shards by admission
order, batch order, scoring batch, and trainers that re-sign rather than retrain a round they
already sent) up to the order in which updates arrive, which changes float sums in the last
bits: the final models must agree to 1e-5. Losing the momentum at the restart, or applying a
round's step twice, moves them apart by orders of magnitude more (checked below).
"""

from __future__ import annotations

import signal

import pytest
import torch

from prime.core import tensors
from prime.demo import LocalNetwork
from prime.blobs.store import BlobStore
from tests.integration.netutil import wait_for

pytestmark = pytest.mark.slow

ROUNDS = 8
JOB = dict(federated={"aggregation": {"name": "fedavgm", "server_momentum": 0.9}, "min_clients": 3,
                      "round_timeout": 60.0})


def final_model(net: LocalNetwork, kill_after: int | None = None, standby: bool = False) -> dict:
    try:
        net.start_infrastructure()
        net.start_coordinator()
        if standby:
            net.start_standby()
        for i in range(len(net.trainer_names)):
            net.start_trainer(i)
        if kill_after is not None:
            at_kill = wait_for(net, lambda s: s["rounds_committed"] >= kill_after and s["rounds_committed"],
                               90, f"round {kill_after}")
            assert at_kill < ROUNDS, "the job finished before the coordinator could be killed"
            net.signal("coordinator", signal.SIGKILL)
            if not standby:
                net.start_coordinator()
        status = wait_for(net, lambda s: s["rounds_committed"] >= ROUNDS and s, 150, "the last round")
    finally:
        net.stop_all()
    assert status["rejected_updates"] == []
    leader = net.standby_dir if standby else net.coordinator_dir
    blob = BlobStore(leader / "blobs").read_bytes(status["model_versions"][-1]["digest"])
    return tensors.decode_state(blob, max_bytes=10**8)


def distance(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_server_momentum_survives_a_coordinator_kill_and_a_standby_takeover(tmp_path):
    clean = final_model(LocalNetwork(tmp_path / "clean", trainers=3, rounds=ROUNDS, local_epochs=2, **JOB))

    restarted_net = LocalNetwork(tmp_path / "restart", trainers=3, rounds=ROUNDS, local_epochs=2, **JOB)
    assert distance(final_model(restarted_net, kill_after=2), clean) < 1e-5
    assert "restored the fedavgm server state committed with round" in restarted_net.log_tail("coordinator", 400)

    takeover_net = LocalNetwork(tmp_path / "takeover", trainers=3, rounds=ROUNDS, local_epochs=2, **JOB)
    assert distance(final_model(takeover_net, kill_after=2, standby=True), clean) < 1e-5
    assert "restored the fedavgm server state committed with round" in takeover_net.log_tail("standby", 400)

    # The check can fail: the same job without momentum (what a lost state amounts to) ends elsewhere.
    plain = {**JOB, "federated": {**JOB["federated"], "aggregation": {"name": "fedavg"}}}
    assert distance(final_model(LocalNetwork(tmp_path / "plain", trainers=3, rounds=ROUNDS, local_epochs=2,
                                             **plain)), clean) > 1e-3
