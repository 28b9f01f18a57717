"""Coordinator SQLite store: atomic commits, versions, no double credit, job binding."""

from __future__ import annotations

import sqlite3

import pytest

from prime.coordinator.ledger import verify_chain
from prime.coordinator.status import DB_NAME
from prime.coordinator.store import AcceptedUpdate, CoordinatorStore
from prime.core.errors import CoordinatorError
from prime.core.identity import Identity


def counts(db: sqlite3.Connection) -> dict[str, int]:
    return {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
            for t in ("model_versions", "rounds", "updates", "ledger")}


def test_fresh_store(tmp_path):
    s = CoordinatorStore(tmp_path / "sub" / DB_NAME)
    assert s.latest_version() is None
    assert s.last_committed_round() == 0
    assert s.ledger() == []
    s.record_genesis("aa" * 32, 5)
    s.record_genesis("bb" * 32, 6)  # idempotent: the first genesis stays
    assert tuple(s.latest_version()) == (0, "aa" * 32, 5)
    s.close()


def test_commit_round_versions_rise_by_one(store, coord, make_commit):
    for r in range(1, 5):
        version = store.commit_round(make_commit(r), coord)
        assert version == r
        assert tuple(store.latest_version()) == (r, f"{r:02x}" * 32, 1000 + r)
        assert store.last_committed_round() == r
    assert [row[0] for row in store.db.execute("SELECT version FROM model_versions ORDER BY version")] == [0, 1, 2, 3, 4]


def test_commit_writes_updates_and_chained_ledger(store, coord, trainers, make_commit):
    store.commit_round(make_commit(1), coord)
    store.commit_round(make_commit(2, trainers=trainers[1:4], samples=(1, 1, 2)), coord)
    assert store.committed_update_digest(1, trainers[0].public_key) == "0100" * 16
    assert store.committed_update_digest(2, trainers[0].public_key) is None
    assert store.committed_update_digest(2, trainers[3].public_key) == "0202" * 16
    entries = store.ledger()
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert [e.round for e in entries] == [1, 1, 2, 2, 2]
    # within a round, entries are in key order (deterministic)
    assert [e.node_key for e in entries[:2]] == sorted(t.public_key for t in trainers[:2])
    verify_chain(entries, coord.public_key)
    row = store.db.execute("SELECT participants, samples, announcements FROM rounds WHERE round=2").fetchone()
    assert row == (3, 4, 1)


@pytest.mark.parametrize("bad_round", [0, 1, 3, 7])
def test_wrong_round_number_leaves_nothing(store, bad_round, coord, make_commit):
    store.commit_round(make_commit(1), coord)
    before = counts(store.db)
    with pytest.raises(CoordinatorError, match="cannot follow"):
        store.commit_round(make_commit(bad_round), coord)
    assert counts(store.db) == before
    assert store.last_committed_round() == 1


def test_failure_midway_rolls_back_everything(store, coord, trainers, make_commit):
    """Two updates for the same key fail on the updates insert, after the version and round rows."""
    t = trainers[0]
    dup = [AcceptedUpdate(t.public_key, "t", "ab" * 32, 5, 0.5), AcceptedUpdate(t.public_key, "t", "cd" * 32, 5, 0.5)]
    before = counts(store.db)
    with pytest.raises(sqlite3.IntegrityError):
        store.commit_round(make_commit(1, updates=dup), coord)
    assert counts(store.db) == before
    assert store.last_committed_round() == 0
    assert tuple(store.latest_version())[0] == 0
    # and the store is still usable afterwards
    assert store.commit_round(make_commit(1), coord) == 1


def test_failure_in_ledger_write_rolls_back(store, coord, make_commit):
    """An exception while signing the ledger (the last step) still leaves no partial round."""

    class Exploding(Identity):
        def sign(self, message: bytes) -> bytes:
            raise RuntimeError("hsm unplugged")

    bad = Exploding(coord.signing_key)
    before = counts(store.db)
    with pytest.raises(RuntimeError, match="hsm"):
        store.commit_round(make_commit(1), bad)
    assert counts(store.db) == before


def test_rollback_survives_reopen(tmp_path, coord, make_commit):
    path = tmp_path / DB_NAME
    s = CoordinatorStore(path)
    s.bind_job("j", coord.public_key)
    s.record_genesis("00" * 32, 1)
    s.commit_round(make_commit(1), coord)
    with pytest.raises(CoordinatorError):
        s.commit_round(make_commit(3), coord)
    s.close()
    s2 = CoordinatorStore(path)
    assert s2.last_committed_round() == 1
    assert counts(s2.db) == {"model_versions": 2, "rounds": 1, "updates": 2, "ledger": 2}
    assert s2.commit_round(make_commit(2), coord) == 2
    verify_chain(s2.ledger(), coord.public_key)
    s2.close()


def test_second_ledger_credit_same_round_node_impossible(store, coord, make_commit):
    store.commit_round(make_commit(1), coord)
    e = store.ledger()[-1]
    with pytest.raises(sqlite3.IntegrityError):
        store.db.execute("INSERT INTO ledger(seq, round, node_key, amount, prev_hash, hash, signature)"
                         " VALUES(?, ?, ?, ?, ?, ?, ?)", (e.seq + 1, e.round, e.node_key, 5, e.hash, b"h" * 32, b"s" * 64))
    assert len(store.ledger()) == 2


def test_update_twice_for_same_round_impossible(store, coord, trainers, make_commit):
    store.commit_round(make_commit(1), coord)
    with pytest.raises(sqlite3.IntegrityError):
        store.db.execute("INSERT INTO updates(round, node_key, node_name, digest, num_samples, score)"
                         " VALUES(1, ?, 'x', 'd', 1, 0.1)", (trainers[0].public_key,))


def test_rejections_recorded_and_truncated(store, trainers):
    store.record_rejection(1, trainers[0].public_key, "t0", "wrong_round", "x" * 2000)
    store.record_rejection(1, None, "", "malformed", "bad bytes")
    rows = store.db.execute("SELECT round, node_key, node_name, reason, length(detail) FROM rejections ORDER BY id").fetchall()
    assert rows == [(1, trainers[0].public_key, "t0", "wrong_round", 500), (1, None, "", "malformed", 9)]


def test_bind_job_refuses_other_job_or_key(tmp_path, coord, trainers):
    path = tmp_path / DB_NAME
    s = CoordinatorStore(path)
    s.bind_job("job-1", coord.public_key)
    s.bind_job("job-1", coord.public_key)  # same binding: fine
    with pytest.raises(CoordinatorError, match="job_id") as info:
        s.bind_job("job-2", coord.public_key)
    assert str(path) in str(info.value)
    with pytest.raises(CoordinatorError, match="coordinator_key"):
        s.bind_job("job-1", trainers[0].public_key)
    s.close()
    reopened = CoordinatorStore(path)
    with pytest.raises(CoordinatorError):
        reopened.bind_job("job-2", coord.public_key)
    assert dict(reopened.db.execute("SELECT key, value FROM meta").fetchall()) == {
        "job_id": "job-1", "coordinator_key": coord.public_key_hex}
    reopened.close()


def test_committed_state_is_durable(tmp_path, coord, make_commit):
    path = tmp_path / DB_NAME
    s = CoordinatorStore(path)
    s.bind_job("j", coord.public_key)
    s.record_genesis("00" * 32, 1)
    for r in (1, 2, 3):
        s.commit_round(make_commit(r), coord)
    ledger = s.ledger()
    s.close()
    s2 = CoordinatorStore(path)
    assert s2.last_committed_round() == 3 and tuple(s2.latest_version())[0] == 3
    assert s2.ledger() == ledger
    s2.close()


def test_penalties_slashes_reputation_and_server_state_commit_with_the_round(store, coord, trainers, make_commit):
    from prime.coordinator.ledger import verify_chain
    from prime.coordinator.reputation import Standing
    from prime.coordinator.store import LedgerCharge

    bad = trainers[3].public_key
    commit = make_commit(1, charges=[LedgerCharge(bad, "penalty", 0, "harmful"), LedgerCharge(bad, "slash", -7, "harmful")],
                         standings={bad: Standing(0.3, 1, 3)}, server_state_digest="5e" * 32)
    store.commit_round(commit, coord)
    kinds = [(e.kind, e.amount, e.reason) for e in store.ledger() if e.node_key == bad]
    assert kinds == [("penalty", 0, "harmful"), ("slash", -7, "harmful")]
    verify_chain(store.ledger(), coord.public_key)  # kinds and reasons are signed into the chain
    assert store.slashed() == {bad: 7}
    assert store.standings()[bad] == Standing(0.3, 1, 3) and store.standings()[bad].excluded(3)
    assert store.latest_server_state() == "5e" * 32
    assert store.median_claim(1) == 20.0  # claims 10 and 30


def test_a_failed_commit_writes_no_reputation_charges_or_state(store, coord, trainers, make_commit):
    from prime.coordinator.reputation import Standing
    from prime.coordinator.store import LedgerCharge

    bad = trainers[3].public_key
    store.commit_round(make_commit(1), coord)
    before = store.ledger()
    with pytest.raises(ValueError, match="kind"):  # fails last, after the state and reputation rows were written
        store.commit_round(make_commit(2, charges=[LedgerCharge(bad, "bogus", -7, "harmful")],
                                       standings={bad: Standing(0.0, 1, 9)}, server_state_digest="5e" * 32), coord)
    assert store.last_committed_round() == 1 and store.ledger() == before
    assert store.standings() == {} and store.latest_server_state() is None


def test_identical_refusals_are_stored_once_with_a_count(store, trainers):
    key = trainers[0].public_key
    for _ in range(3):
        store.record_rejection(4, key, "t0", "norm_too_large", "L2 norm 1e4")
    store.record_rejection(4, key, "t0", "harmful", "worse")
    rows = store.db.execute("SELECT reason, count FROM rejections WHERE round=4 ORDER BY id").fetchall()
    assert rows == [("norm_too_large", 3), ("harmful", 1)]


def test_a_ledger_of_the_first_schema_gets_kinds_and_stays_valid(tmp_path, coord, make_commit):
    from prime.coordinator.ledger import verify_chain

    path = tmp_path / "old.sqlite"
    old = CoordinatorStore(path)
    old.bind_job("job-1", coord.public_key)
    old.record_genesis("00" * 32, 1000)
    old.commit_round(make_commit(1), coord)
    entries = old.ledger()
    old.db.executescript(  # back to the first schema's ledger, as an older prime wrote it
        "CREATE TABLE l1(seq INTEGER PRIMARY KEY, round INTEGER NOT NULL, node_key BLOB NOT NULL, amount INTEGER NOT NULL,"
        " prev_hash BLOB NOT NULL, hash BLOB NOT NULL, signature BLOB NOT NULL, UNIQUE(round, node_key));"
        "INSERT INTO l1 SELECT seq, round, node_key, amount, prev_hash, hash, signature FROM ledger;"
        "DROP TABLE ledger; ALTER TABLE l1 RENAME TO ledger;")
    old.close()
    reopened = CoordinatorStore(path)
    assert reopened.ledger() == entries
    verify_chain(reopened.ledger(), coord.public_key)
    reopened.commit_round(make_commit(2), coord)  # and the new schema works on it
    verify_chain(reopened.ledger(), coord.public_key)
    reopened.close()
