"""A trainer's audit log gets its refusals of signed rounds, capped; junk drops are only counted."""

from __future__ import annotations

import json
from types import SimpleNamespace

from prime.audit import AUDIT_FILE, AuditLog, verify_log
from prime.core.identity import Identity
from prime.trainer.node import MAX_AUDITED_DROPS, TrainerNode


def test_refusals_of_signed_rounds_are_audited_and_capped(tmp_path):
    identity = Identity.from_seed(b"t" * 32)
    with AuditLog.open(tmp_path, identity) as log:
        node = SimpleNamespace(dropped={}, audit=log)
        TrainerNode._drop(node, "config_mismatch", "round 3: the job's terms differ")
        for _ in range(MAX_AUDITED_DROPS + 5):
            TrainerNode._drop(node, "shard_mismatch", "round 4 assigns shard 1")
        TrainerNode._drop(node, "bad_announce", "not signed by the pinned key")  # anyone can send junk
    lines = [json.loads(line) for line in (tmp_path / AUDIT_FILE).read_text().splitlines()]
    reasons = [line["fields"]["reason"] for line in lines]
    assert reasons.count("config_mismatch") == 1 and reasons.count("shard_mismatch") == MAX_AUDITED_DROPS
    assert "bad_announce" not in reasons and node.dropped["bad_announce"] == 1
    assert verify_log(tmp_path, identity.public_key).ok
