"""StandbyRole.holds: a standby mirrors any commit it does not hold exactly, including a
same-numbered round whose model differs (its own unpublished local commit loses)."""

from __future__ import annotations

from types import SimpleNamespace

from prime.coordinator.standby import StandbyRole
from prime.coordinator.store import AcceptedUpdate, RoundCommit


def test_holds_compares_round_and_model(store, coord, trainers):
    key = trainers[0].public_key
    store.record_genesis("00" * 32, 1)
    for r, digest in ((1, "11" * 32), (2, "22" * 32)):
        store.commit_round(RoundCommit(r, digest, 1, [AcceptedUpdate(key, "t", "ab" * 32, 1, 1.0)], {key: 1},
                                       {}, 0.1, 1), coord)
    fake = SimpleNamespace(store=store, config=SimpleNamespace(network=SimpleNamespace(heartbeat_interval=0.5)))
    role = StandbyRole(fake, SimpleNamespace(highest_term=1), flagged=True)
    assert role.holds(1, "anything")  # older rounds: superseded by what we hold
    assert role.holds(2, "22" * 32)
    assert not role.holds(2, "99" * 32)  # same round, other model: the published one must replace ours
    assert not role.holds(3, "33" * 32)
