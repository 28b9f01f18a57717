"""The model registry on a real store: lineage and gate promotions commit with the round; operator
promotions need the gates unless forced; one production version at a time; metadata."""

from __future__ import annotations

import json
import sqlite3

import pytest

from prime.coordinator import registry
from prime.coordinator.status import DB_NAME
from prime.core.errors import CoordinatorError

GATES = {"staging": {"min_accuracy": 0.52}, "production": {"max_loss": 0.3}}


def _lineage(round_number: int, metrics: dict) -> registry.Lineage:
    return registry.Lineage(round_number - 1, round_number, "digits", {"hidden": [8]}, "fedavg", "cd" * 32,
                            [{"name": "t", "key": "ab" * 32, "samples": 1, "score": 0.1, "share": 1.0}], metrics)


def _commit(store, coord, make_commit, round_number: int, gates=GATES) -> list[registry.Promotion]:
    commit = make_commit(round_number)
    done: list[registry.Promotion] = []
    lineage = _lineage(round_number, commit.metrics)
    hook = lambda cur, version: done.extend(registry.record_commit(cur, version, lineage, gates))  # noqa: E731
    store.commit_round(type(commit)(**{**commit.__dict__, "also_write": (hook,)}), coord)
    return done


@pytest.fixture
def bound(store):
    registry.bind(store.db, GATES, registry.Lineage(None, 0, "digits", {}, "fedavg", None, [], {}))
    return store


def test_versions_enter_stages_by_their_gates_at_commit(bound, coord, make_commit):
    # make_commit's metrics: accuracy 0.5 + r/100, loss 1/(r+1)
    assert _commit(bound, coord, make_commit, 1) == []  # accuracy 0.51 < 0.52
    [p] = _commit(bound, coord, make_commit, 2)  # 0.52 passes staging; loss 0.33 > 0.3 fails production
    assert (p.version, p.from_stage, p.to_stage, p.by, p.forced) == (2, "training", "staging", "gates", False)
    assert p.gates == [{"stage": "staging", "gate": "min_accuracy", "threshold": 0.52, "value": 0.52, "passed": True}]
    [p] = _commit(bound, coord, make_commit, 3)  # loss 0.25: production, staging gates passed on the way
    assert (p.to_stage, [g["gate"] for g in p.gates]) == ("production", ["min_accuracy", "max_loss"])
    archived, p = _commit(bound, coord, make_commit, 4)  # a new production version archives the last one
    assert (archived.version, archived.to_stage, archived.by) == (3, "archived", "registry")
    entries = registry.versions(bound.db)
    assert [e.stage for e in entries] == ["training", "training", "staging", "archived", "production"]
    assert entries[4].lineage.parent == 3 and entries[4].lineage.metrics["loss"] == pytest.approx(0.2)
    assert [pr.to_stage for pr in entries[3].promotions] == ["production", "archived"]


def test_a_failing_registry_write_rolls_the_round_back(bound, coord, make_commit):
    def broken(cur, version):
        raise sqlite3.IntegrityError("boom")

    commit = make_commit(1)
    with pytest.raises(sqlite3.IntegrityError):
        bound.commit_round(type(commit)(**{**commit.__dict__, "also_write": (broken,)}), coord)
    assert bound.last_committed_round() == 0 and bound.latest_version()[0] == 0


def test_operator_promotion_needs_gates_unless_forced(bound, coord, make_commit, tmp_path):
    for r in (1, 2):
        _commit(bound, coord, make_commit, r)
    db = registry.open_writable(tmp_path / DB_NAME)
    with pytest.raises(CoordinatorError, match=r"not pass the gates to enter staging: min_accuracy 0.52: 0.51 FAILS"):
        registry.promote(db, "1", "staging", force=False, reason="", who="alice")
    [p] = registry.promote(db, "v1", "staging", force=True, reason="demo", who="alice")
    assert (p.forced, p.by, p.reason) == (True, "operator:alice", "demo")
    with pytest.raises(CoordinatorError, match="already in staging"):
        registry.promote(db, "1", "staging", force=True, reason="", who="alice")
    with pytest.raises(CoordinatorError, match="does not pass the gates to enter production"):
        registry.promote(db, "staging", "production", force=False, reason="", who="alice")  # newest in staging: v2
    [p] = registry.promote(db, "0", "archived", force=False, reason="", who="bob")
    assert not p.forced and p.reason == "archived by hand"
    with pytest.raises(CoordinatorError, match="no model version 9"):
        registry.promote(db, "9", "staging", force=True, reason="", who="bob")
    with pytest.raises(CoordinatorError, match="promote to staging, production or archived"):
        registry.promote(db, "1", "training", force=True, reason="", who="bob")
    registry.promote(db, "1", "production", force=True, reason="", who="bob")
    registry.promote(db, "2", "production", force=True, reason="", who="bob")
    stages = [e.stage for e in registry.versions(db)]
    assert stages == ["archived", "archived", "production"] and stages.count("production") == 1
    db.close()


def test_metadata_merges_and_is_bounded(bound, coord, make_commit, tmp_path):
    _commit(bound, coord, make_commit, 1)
    db = registry.open_writable(tmp_path / DB_NAME)
    assert registry.annotate(db, "latest", {"owner": "ml", "ticket": 7}).metadata == {"owner": "ml", "ticket": 7}
    assert registry.annotate(db, "1", {"owner": None}).metadata == {"ticket": 7}
    with pytest.raises(CoordinatorError, match="over"):
        registry.annotate(db, "1", {"blob": "x" * 20000})
    db.close()


def test_versions_committed_before_the_registry_get_lineage_from_the_round_tables(store, coord, make_commit):
    store.commit_round(make_commit(1), coord)  # no registry hook: an older coordinator
    [genesis, v1] = registry.versions(store.db)
    assert (v1.stage, v1.lineage.parent, v1.lineage.round) == ("training", 0, 1)
    assert sorted(c["name"] for c in v1.lineage.contributors) == ["trainer-0", "trainer-1"]
    assert v1.lineage.metrics == json.loads(store.db.execute("SELECT metrics FROM rounds").fetchone()[0])
    with pytest.raises(CoordinatorError, match="give a number"):
        registry.resolve([genesis, v1], "newest")


def test_the_mirrored_snapshot_carries_the_registry(bound, coord, make_commit, tmp_path):
    from prime.coordinator.store import CoordinatorStore

    _commit(bound, coord, make_commit, 1)
    _commit(bound, coord, make_commit, 2)
    mirror = CoordinatorStore(tmp_path / "standby" / DB_NAME)
    mirror.restore(bound.snapshot(), "job-1", coord.public_key)
    assert [e.stage for e in registry.versions(mirror.db)] == [e.stage for e in registry.versions(bound.db)]
    assert registry.stored_gates(mirror.db) == GATES
    mirror.close()


def test_cli_tables_for_people(bound, coord, make_commit, tmp_path, capsys):
    from prime.cli import main

    for r in (1, 2):
        _commit(bound, coord, make_commit, r)
    assert main(["registry", "list", "--data-dir", str(tmp_path)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["version", "stage", "round", "parent", "trainers", "accuracy", "loss"]
    assert table[3].split()[:5] == ["v2", "staging", "2", "v1", "1"]
    assert main(["registry", "show", "staging", "--data-dir", str(tmp_path)]) == 0
    shown = capsys.readouterr().out
    assert "v2  stage staging  round 2  parent v1" in shown and "training -> staging by gates" in shown
    assert main(["registry", "diff", "1", "2", "--no-weights", "--data-dir", str(tmp_path)]) == 0
    assert "0.51 -> 0.52         (+0.01)" in capsys.readouterr().out
    assert main(["registry", "show", "production", "--data-dir", str(tmp_path)]) == 2
    assert "no version is in production" in capsys.readouterr().err
    assert main(["registry", "promote", "1", "--to", "staging", "--data-dir", str(tmp_path)]) == 2  # no node.key here
    assert "node.key is missing" in capsys.readouterr().err
