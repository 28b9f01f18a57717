"""``prime verify`` on a real network's data dir: every honest update recomputes, a tampered one
is named.

Two digits trainers train two reproducible rounds (``training.reproducible_rounds``), one of
them as a two-rank ``torchrun`` node, so the audit also shows that N ranks compute what the
one-process verifier does. Then ``prime verify`` runs as a real subprocess on the coordinator's
data dir (all updates pass), and (in this process, through ``prime.cli.main``, to spare another
torch start-up) on a copy in which one committed update was replaced by a slightly altered one,
stored under its own digest so it reads back cleanly (exit 1, that trainer named, the other
still passing).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys

import pytest

from prime import cli
from prime.core import tensors
from prime.core.identity import Identity
from prime.demo import LocalNetwork
from prime.blobs.store import BlobStore
from tests.integration.netutil import wait_for

pytestmark = pytest.mark.slow

ROUNDS = 2


def verify(net: LocalNetwork, data_dir, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "prime", "verify", "--config", str(net.config_path), "--data-dir", str(data_dir),
         *extra], capture_output=True, text=True, timeout=120, cwd=net.workdir)


def test_verify_passes_honest_rounds_and_names_a_tampered_update(tmp_path, capsys):
    net = LocalNetwork(tmp_path / "net", trainers=2, rounds=ROUNDS, local_epochs=2,
                       training={"reproducible_rounds": True}, federated={"round_timeout": 60.0})
    honest, tampered = net.trainer_names
    try:
        net.start_infrastructure()
        net.start_coordinator()
        net.start_trainer(0)
        net.start_trainer(1, ranks=2)
        status = wait_for(net, lambda s: s["rounds_committed"] >= ROUNDS and s, 90, f"{ROUNDS} reproducible rounds")
    finally:
        net.stop_all()
    assert status["rejected_updates"] == []

    audit = verify(net, net.coordinator_dir, "--round", "all", "--rate", "1", "--json")
    assert audit.returncode == 0, audit.stderr + audit.stdout
    report = json.loads(audit.stdout)
    assert (report["checked"], report["passed"], report["failed"], report["inconclusive"]) == (4, 4, 0, 0), report
    assert {(r["round"], r["trainer"]) for r in report["results"]} == {
        (r, name) for r in range(1, ROUNDS + 1) for name in net.trainer_names}
    assert all(r["distance"] < 1e-5 for r in report["results"]), report["results"]  # tolerance is 1e-3

    # A copy of the data dir in which trainer-002's round-2 update is 2% larger than what it trained.
    copy = tmp_path / "copy"
    shutil.copytree(net.coordinator_dir, copy)
    key = Identity.load_or_create(net.trainer_dir(tampered)).public_key
    blobs = BlobStore(copy / "blobs")
    db = sqlite3.connect(copy / "coordinator.sqlite")
    try:
        (digest,) = db.execute("SELECT digest FROM updates WHERE round=? AND node_key=?", (ROUNDS, key)).fetchone()
        delta = tensors.decode_state(blobs.read_bytes(digest), max_bytes=10**8)
        forged = blobs.put_bytes(tensors.encode_state({k: v * 1.02 for k, v in delta.items()}))
        db.execute("UPDATE updates SET digest=? WHERE round=? AND node_key=?", (forged, ROUNDS, key))
        db.commit()
    finally:
        db.close()
    capsys.readouterr()
    assert in_process(net, copy, "--round", "all", "--rate", "1") == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert [line for line in lines if "FAILED" in line] == [
        next(line for line in lines if tampered in line and line.split()[0] == str(ROUNDS))], out
    assert lines[-1] == f"failed: {tampered} (round {ROUNDS})", out
    assert "3 passed, 1 failed, 0 inconclusive" in out
    assert sum(honest in line and line.endswith("passed") for line in lines) == ROUNDS

    # Usage errors: one clear line on stderr, exit 2.
    assert in_process(net, copy, "--round", "9") == 2
    assert capsys.readouterr().err.startswith("error: round 9 is not committed")
    assert in_process(net, tmp_path / "nowhere") == 2
    assert "no coordinator database" in capsys.readouterr().err


def in_process(net: LocalNetwork, data_dir, *extra: str) -> int:
    return cli.main(["verify", "--config", str(net.config_path), "--data-dir", str(data_dir), *extra])


def test_coordinator_spot_checks_refuse_a_poisoner_that_the_loss_score_lets_through(tmp_path):
    """Live: with ``spot_check_rate = 1`` the coordinator recomputes every round. A label-flipping
    trainer (real work on poisoned labels: not empty, not a copy, not harmful enough for the loss
    gate) is refused as ``failed_spot_check``, penalized in the ledger and earns nothing, while the
    honest trainers' rounds recompute and every round commits."""
    from benchmarks.byzantine import run_cell

    cell = run_cell(task="digits", strategy={"name": "fedtrimmedavg", "beta": 0.2}, attack="labelflip",
                    trainers=4, attackers=1, rounds=3, round_timeout=20.0, workdir=tmp_path / "net",
                    overrides={"training": {"reproducible_rounds": True},
                               "verification": {"spot_check_rate": 1.0}})
    assert cell["error"] is None and not cell["stalled"] and cell["rounds_committed"] == 3, cell
    assert cell["refusals"].get("failed_spot_check", 0) >= 1, cell["refusals"]
    assert set(cell["refusals"]) <= {"failed_spot_check"}, cell["refusals"]  # honest work always recomputes
    assert cell["refused_attacker"] and cell["attacker_reward_share"] == 0.0, cell
    db = sqlite3.connect(tmp_path / "net" / "coordinator" / "coordinator.sqlite")
    try:
        reasons = {row[0] for row in db.execute("SELECT reason FROM ledger WHERE kind='penalty'")}
    finally:
        db.close()
    assert reasons == {"failed_spot_check"}, reasons
