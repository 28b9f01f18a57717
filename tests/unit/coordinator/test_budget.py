"""The coordinator's budget on a real store: spend settles and commits with its round, a stop is
recorded with the round that reached the limit, status shows spend against each limit, a spent
budget refuses to start, and updates above the memory limit are refused."""

from __future__ import annotations

import sqlite3

import pytest

from prime.coordinator import budget_store
from prime.coordinator.budget import BudgetKeeper
from prime.coordinator.rounds import RoundCollector
from prime.coordinator.services import CoordinatorServices
from prime.coordinator.status import format_status, read_status
from prime.coordinator.verification import check_record
from prime.bus.topics import Topics
from prime.core.config import parse_config
from prime.core.errors import CoordinatorError, UpdateRejected
from tests import factories


def keeper(store, coord, trainers, budget) -> BudgetKeeper:
    config = parse_config({"job_id": "job-1", "budget": budget,
                           "admission": {"trainers": {t.name: t.public_key_hex for t in trainers}}}, "job.toml")
    return BudgetKeeper(CoordinatorServices(config, coord, store, None, None, Topics("job-1"), None, None))


def collector(round_number, trainers, **claims) -> RoundCollector:
    c = RoundCollector(factories.announcement(round=round_number, selected=[t.public_key for t in trainers]), None)
    for t in trainers:
        c.accepted[t.public_key] = factories.update(round=round_number, node_name=t.name, **claims)
    return c


def test_spend_commits_with_its_round_and_the_last_round_records_the_stop(store, coord, trainers, make_commit, tmp_path):
    k = keeper(store, coord, trainers, {"rounds": 2, "cost": 100.0, "prices": {"cpu": 3.6}, "device_hours": 1.0})
    k.check_start()
    for r in (1, 2):
        spend, detail, stop = k.settle(collector(r, trainers[:2], device_seconds=30.0, device_kind="cpu",
                                                 peak_memory_bytes=5 << 20), wall_seconds=40.0)
        assert spend.device_seconds == 60.0 and spend.cost == pytest.approx(0.06)
        assert (stop is None) == (r == 1)
        store.commit_round(make_commit(r, spend=spend, spend_detail=detail, stop=stop), coord)
    assert k.spent().rounds == 2 and k.spent().device_seconds == 120.0
    assert k.usage()["rounds"] == (2.0, 2.0) and k.usage()["device_hours"] == pytest.approx((120 / 3600, 1.0))
    status = read_status(tmp_path)
    assert status["budget"]["stopped"]["limit"] == "rounds" and status["budget"]["stopped"]["round"] == 2
    assert status["budget"]["limits"]["cost"]["spent"] == pytest.approx(0.12)
    shown = format_status(status)
    assert "rounds 2 of 2 (100%)" in shown and "cost 0.12 of 100 (0%)" in shown
    assert "stopped by its budget after round 2: rounds 2 of 2 (100%)" in shown
    with pytest.raises(CoordinatorError, match=r"already spent \(rounds 2 of 2 \(100%\).*raise budget.rounds in job.toml"):
        keeper(store, coord, trainers, {"rounds": 2}).check_start()
    k = keeper(store, coord, trainers, {"rounds": 3})  # a raised limit lets the job go on
    k.check_start()
    assert k.stopped is None


def test_a_commit_that_fails_in_its_budget_write_leaves_nothing(store, coord, trainers, make_commit):
    k = keeper(store, coord, trainers, {"rounds": 1})
    spend, detail, stop = k.settle(collector(1, trainers[:1]), wall_seconds=5.0)
    assert stop is not None
    store.db.execute("INSERT INTO budget_spend VALUES(1, 0, 0, 0, 0, '{}')")  # the spend write will conflict
    with pytest.raises(sqlite3.IntegrityError):
        store.commit_round(make_commit(1, spend=spend, spend_detail=detail, stop=stop), coord)
    assert store.last_committed_round() == 0 and budget_store.read_meta(store.db, "stopped") is None


def test_claimed_device_time_is_capped_and_unreported_time_counts_in_full(store, coord, trainers):
    k = keeper(store, coord, trainers, {"device_hours": 1.0})
    spend, detail, _ = k.settle(collector(1, trainers[:1], device_seconds=500.0, devices=2), wall_seconds=10.0)
    assert spend.device_seconds == 20.0 and k.capped == 1
    assert detail[next(iter(detail))]["claimed_device_seconds"] == 500.0
    spend, _, _ = k.settle(collector(1, trainers[:1]), wall_seconds=10.0)
    assert spend.device_seconds == 10.0


def test_wall_time_already_spent_refuses_to_start(store, coord, trainers, make_commit):
    store.commit_round(make_commit(1, seconds=70.0), coord)  # a database from before budgets: rounds' own seconds
    with pytest.raises(CoordinatorError, match=r"wall_seconds 70 of 60 .*budget.wall_seconds"):
        keeper(store, coord, trainers, {"wall_seconds": 60.0}).check_start()


def test_updates_above_the_memory_limit_are_refused():
    config = parse_config({"job_id": "job", "budget": {"memory_bytes_per_trainer": 1000}})
    ann = factories.announcement(selected=[b"k" * 32])
    open_config = config.model_copy(update={"admission": config.admission.model_copy(update={"open": True})})
    check_record(factories.update(peak_memory_bytes=1000), b"k" * 32, open_config, ann, 3.0)
    for record, why in ((factories.update(peak_memory_bytes=1001), "peaked at 1001 bytes"),
                        (factories.update(), "does not report its peak memory")):
        with pytest.raises(UpdateRejected, match=why) as caught:
            check_record(record, b"k" * 32, open_config, ann, 3.0)
        assert caught.value.reason == "over_memory_budget"


def test_a_leader_of_a_database_whose_budget_is_reached_stays_stopped(store, coord, trainers, make_commit):
    k = keeper(store, coord, trainers, {"rounds": 1})
    spend, detail, stop = k.settle(collector(1, trainers[:1]), wall_seconds=5.0)
    store.commit_round(make_commit(1, spend=spend, spend_detail=detail, stop=stop), coord)
    taking_over = keeper(store, coord, trainers, {"rounds": 1})  # e.g. a standby with the mirrored database
    taking_over.stopped = None
    taking_over.resume()
    assert taking_over.stopped["round"] == 1 and taking_over.stopped["limit"] == "rounds"
    raised = keeper(store, coord, trainers, {"rounds": 2})
    raised.resume()
    assert raised.stopped is None
