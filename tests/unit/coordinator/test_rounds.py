"""RoundCollector: claim, duplicates, release, everyone_reported."""

from __future__ import annotations

import pytest

from prime.coordinator.rounds import RoundCollector
from prime.core.aggregation import FedAvg
from prime.core.errors import UpdateRejected
from tests import factories
from prime.core.records import RoundAnnouncement, UpdateRecord

A, B, C = b"a" * 32, b"b" * 32, b"c" * 32


def ann(selected=(A, B)) -> RoundAnnouncement:
    return factories.announcement(round=4, model_version=3, model_size=1, providers=[], selected=list(selected),
                                  deadline=1.0, issued=0.0, expires=1.0, total_rounds=0)


def rec(digest: str = "11", name: str = "n", samples: int = 5) -> UpdateRecord:
    return factories.update(round=4, model_version=3, node_name=name, blob_digest=digest * 32, blob_size=1,
                            num_samples=samples, metrics={}, providers=[], issued=0.0, expires=600.0)


def collector(selected=(A, B)) -> RoundCollector:
    return RoundCollector(ann(selected), FedAvg())


def test_claim_then_exact_repeat_is_ignored():
    c = collector()
    assert c.round == 4
    assert c.claim(A, rec("11")) is True
    assert c.in_flight == {A: "11" * 32}
    assert c.claim(A, rec("11")) is False  # same record again (bus + DHT): not an error
    assert c.missing() == [B]


def test_conflicting_update_while_in_flight_or_accepted():
    c = collector()
    c.claim(A, rec("11"))
    with pytest.raises(UpdateRejected) as info:
        c.claim(A, rec("22"))
    assert info.value.reason == "duplicate"
    c.accept(A, rec("11"), 0.1)
    assert c.claim(A, rec("11")) is False
    with pytest.raises(UpdateRejected, match="duplicate"):
        c.claim(A, rec("22"))
    assert c.accepted[A].blob_digest == "11" * 32


def test_release_allows_a_corrected_retry():
    c = collector()
    c.claim(A, rec("11"))
    c.release(A)
    assert A not in c.in_flight
    assert c.missing() == [A, B]
    assert c.claim(A, rec("22")) is True
    c.release(C)  # releasing something never claimed is harmless


def test_everyone_reported_only_when_all_selected_accepted():
    c = collector()
    assert not c.everyone_reported.is_set()
    c.claim(A, rec("11"))
    c.accept(A, rec("11"), 0.1)
    assert not c.everyone_reported.is_set()
    assert c.missing() == [B]
    c.claim(B, rec("22"))
    assert not c.everyone_reported.is_set()
    assert c.missing() == []
    c.accept(B, rec("22"), 0.1)
    assert c.everyone_reported.is_set()
    assert c.in_flight == {}


async def test_everyone_reported_wakes_a_waiter():
    import asyncio

    c = collector(selected=(A,))
    waiter = asyncio.create_task(c.everyone_reported.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    c.claim(A, rec())
    c.accept(A, rec(), 0.1)
    await asyncio.wait_for(waiter, 1.0)


def test_accepted_updates_sorted_with_scores_and_shares():
    c = collector(selected=(B, A))
    c.claim(B, rec("22", "bob", 3))
    c.accept(B, rec("22", "bob", 3), -0.5)
    c.claim(A, rec("11", "alice", 9))
    c.accept(A, rec("11", "alice", 9), 0.2)
    ups = c.accepted_updates({A: 0.75, B: 0.25})
    assert [u.node_key for u in ups] == [A, B]
    assert [(u.node_name, u.digest, u.num_samples, u.score, u.share) for u in ups] == [
        ("alice", "11" * 32, 9, 0.2, 0.75), ("bob", "22" * 32, 3, -0.5, 0.25)]
    assert c.accepted_updates({})[0].share == 0.0


def test_a_refused_trainer_is_no_longer_waited_for_and_its_conduct_is_noted():
    c = collector()
    c.claim(A, rec("11"))
    c.accept(A, rec("11"), 0.1)
    assert not c.everyone_reported.is_set()
    c.refuse(B, "norm_too_large")
    assert c.everyone_reported.is_set() and c.expected() == [] and c.refused == {B}
    assert c.conduct[B].refusals == {"norm_too_large"}
    c.refuse(C, "wrong_round")  # not selected; timing reasons cost nothing
    assert C not in c.refused and c.conduct[C].refusals == set()
