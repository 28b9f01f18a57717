"""`prime-coordinator status` reads a real store: rounds, rejections, balances, chain validity."""

from __future__ import annotations

import sqlite3

import pytest

from prime.coordinator.status import DB_NAME, format_status, read_status
from prime.core.errors import CoordinatorError
from prime.core.identity import network_id


@pytest.fixture
def populated(store, coord, trainers, make_commit):
    store.commit_round(make_commit(1, trainers=trainers[:2], samples=(10, 30)), coord)
    store.commit_round(make_commit(2, trainers=trainers[1:3], samples=(1, 1), metrics={}), coord)
    store.record_rejection(2, trainers[3].public_key, "", "not_selected", "not selected for round 2")
    store.record_rejection(2, trainers[0].public_key, "trainer-0", "wrong_round", "update for round 1")
    store.record_rejection(3, None, "", "malformed", "garbage")
    return store


def test_missing_database(tmp_path):
    with pytest.raises(CoordinatorError, match="no coordinator database"):
        read_status(tmp_path)


def test_reports_rounds_versions_rejections_balances(populated, tmp_path, coord, trainers):
    status = read_status(tmp_path)  # while the store is still open (WAL): safe to read
    assert status["job_id"] == "job-1"
    assert status["coordinator_key"] == coord.public_key_hex
    assert status["rounds_committed"] == 2
    assert [r["round"] for r in status["rounds"]] == [1, 2]
    assert status["rounds"][0]["participants"] == 2 and status["rounds"][0]["samples"] == 40
    assert status["rounds"][1]["accuracy"] is None
    assert [v["version"] for v in status["model_versions"]] == [0, 1, 2]
    rej = status["rejected_updates"]
    assert [r["reason"] for r in rej] == ["not_selected", "wrong_round", "malformed"]
    assert rej[0]["node"] == network_id(trainers[3].public_key)  # unnamed: falls back to its network id
    assert rej[0]["key"] == trainers[3].public_key_hex
    assert rej[1]["node"] == "trainer-0"
    assert rej[2]["node"] == "?" and rej[2]["key"] is None
    # round 1: 1_000_000 * 10 // 40 and * 30 // 40; round 2: 500_000 each
    rewards = status["rewards"]
    assert len(rewards) == 3
    by_name = {name: sum(v for label, v in rewards.items() if label.startswith(name))
               for name in ("trainer-0", "trainer-1", "trainer-2")}
    assert by_name == pytest.approx({"trainer-0": 0.25, "trainer-1": 0.75 + 0.5, "trainer-2": 0.5})
    assert status["ledger_entries"] == 4
    assert status["ledger_valid"] is True and status["ledger_error"] is None


def test_status_after_store_closed(populated, tmp_path):
    populated.close()
    status = read_status(tmp_path)
    assert status["rounds_committed"] == 2 and status["ledger_valid"]


def test_status_is_read_only(populated, tmp_path):
    populated.close()
    before = (tmp_path / DB_NAME).read_bytes()
    read_status(tmp_path)
    assert (tmp_path / DB_NAME).read_bytes() == before


def test_balances_are_per_key_not_per_self_chosen_name(store, tmp_path, coord, trainers, make_commit):
    """node_name is chosen by the trainer; two keys using one name must not share a balance."""
    from prime.coordinator.store import AcceptedUpdate, RoundCommit

    a, b = trainers[0].public_key, trainers[1].public_key
    commit = RoundCommit(1, "11" * 32, 10, [AcceptedUpdate(a, "same", "aa" * 32, 1, 0.5),
                                           AcceptedUpdate(b, "same", "bb" * 32, 1, 0.5)],
                         {a: 3_000_000, b: 1_000_000}, {}, 1.0, 1)
    store.commit_round(commit, coord)
    rewards = read_status(tmp_path)["rewards"]
    assert sorted(rewards.values()) == pytest.approx([1.0, 3.0])


@pytest.mark.parametrize(
    "tamper, error",
    [
        ("UPDATE ledger SET amount = amount + 1 WHERE seq = 2", "entry 2"),
        ("UPDATE ledger SET node_key = X'{evil}' WHERE seq = 3", "entry 3"),
        ("DELETE FROM ledger WHERE seq = 1", "entry 2"),
        ("UPDATE ledger SET signature = X'{zero}' WHERE seq = 4", "signature"),
    ],
)
def test_broken_chain_flagged_after_direct_tampering(populated, tmp_path, tamper, error):
    populated.close()
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute(tamper.format(evil="ee" * 32, zero="00" * 64))
    db.commit()
    db.close()
    status = read_status(tmp_path)
    assert status["ledger_valid"] is False
    assert error in status["ledger_error"]
    assert "BROKEN" in format_status(status)


def test_format_status(populated, tmp_path):
    text = format_status(read_status(tmp_path))
    assert "job job-1" in text
    assert "committed rounds: 2" in text
    assert "rejected updates: 3" in text
    assert "not_selected" in text and "wrong_round" in text
    assert "chain valid" in text
    assert "trainer-1" in text and "1.250000" in text
    assert "model versions: 3" in text
