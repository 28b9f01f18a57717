"""What the coordinator writes to its audit log: admissions once per key, refusals once per round, key
and reason, a commit's charges, exclusions and promotions; all of it verifies."""

from __future__ import annotations

import json

import pytest

from prime.audit import AUDIT_FILE, AuditLog, verify_log
from prime.coordinator.auditing import CoordinatorAudit
from prime.coordinator.daemon import Coordinator
from prime.coordinator.registry import Promotion
from prime.coordinator.reputation import Standing
from prime.coordinator.store import LedgerCharge
from prime.core.config import parse_config
from prime.core.errors import ConfigError


def _events(data_dir) -> list[dict]:
    return [json.loads(line) for line in (data_dir / AUDIT_FILE).read_text().splitlines()]


def test_coordinator_events(tmp_path, store, coord, trainers, make_commit):
    a, b = trainers[0].public_key, trainers[1].public_key
    config = parse_config({"admission": {"trainers": {"t0": a.hex(), "t1": b.hex()}}})
    store.commit_round(make_commit(1), coord)  # t0 and t1 contributed before this process started
    with AuditLog.open(tmp_path / "node", coord) as log:
        audit = CoordinatorAudit(log, config)
        audit.started("primary", "ab" * 32)
        audit.accepted(store.db, 2, a, "t0")  # not new
        stranger = trainers[2].public_key
        audit.accepted(store.db, 2, stranger, "t2")
        audit.accepted(store.db, 3, stranger, "t2")  # once per job
        for _ in range(3):
            audit.refused(2, b, "t1", "harmful", "raised the loss")
        audit.refused(2, b, "t1", "copy", "same as t0")
        audit.committed(2, 2, [LedgerCharge(b, "penalty", 0, "harmful"), LedgerCharge(b, "slash", -5, "harmful")],
                        {b: Standing()}, {b: Standing(0.2, 1, 4), a: Standing()},
                        [Promotion(2, "training", "staging", "gates", False, "passed")])
    events = _events(tmp_path / "node")
    assert [e["event"] for e in events] == ["coordinator_started", "admission", "refusal", "refusal", "penalty",
                                            "slash", "exclusion", "promotion"]
    assert events[0]["fields"]["admitted"] == {"t0": a.hex(), "t1": b.hex()}
    assert events[1]["fields"] == {"round": 2, "key": stranger.hex(), "name": "t2", "listed": False,
                                   "open_job": False}
    assert events[5]["fields"]["amount_micro"] == -5 and events[6]["fields"]["excluded_until_round"] == 4
    assert events[7]["fields"]["to_stage"] == "staging"
    assert verify_log(tmp_path / "node", coord.public_key).ok


async def test_a_gate_on_a_metric_the_task_lacks_stops_the_coordinator_at_start(tmp_path, trainers):
    config = parse_config({"admission": {"trainers": {"t0": trainers[0].public_key.hex()}},
                           "federated": {"min_clients": 1}, "gates": {"staging": {"max_bits_per_byte": 2.0}}},
                          "job.toml")
    with pytest.raises(ConfigError, match=r"job.toml: key 'gates.staging.max_bits_per_byte': task 'digits' reports "
                                          r"no metric 'bits_per_byte'; it reports accuracy, loss"):
        await Coordinator.create(config, data_dir=tmp_path / "coord")
    assert not (tmp_path / "coord" / "coordinator.sqlite").exists()  # refused before anything was opened
