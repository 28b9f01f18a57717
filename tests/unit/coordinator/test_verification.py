"""Update verification: each rejection reason from check_record and check_tensors."""

from __future__ import annotations

import pytest
import torch

from prime.coordinator.verification import check_record, check_tensors
from prime.core.config import parse_config
from prime.core.errors import UpdateRejected
from prime.core.identity import Identity
from tests import factories
from prime.core.records import RoundAnnouncement, UpdateRecord

NOW = 1_800_000_000.0
ALICE = Identity.from_seed(b"a" * 32)
BOB = Identity.from_seed(b"b" * 32)
EVE = Identity.from_seed(b"e" * 32)
CONFIG = parse_config({
    "job_id": "job",
    "admission": {"trainers": {"alice": ALICE.public_key_hex, "bob": BOB.public_key_hex}},
    "federated": {"min_clients": 1},
    "network": {"max_message_size": 1000},
    "security": {"max_clock_skew": 30.0, "record_ttl": 600.0, "max_samples_per_update": 5000},
})
ANN = factories.announcement(round=3, model_version=2, model_size=10, providers=[], selected=[ALICE.public_key],
                             shards=[1], num_shards=2, deadline=1.0, issued=0.0, expires=1.0, total_rounds=0)


def record(**kw) -> UpdateRecord:
    return factories.update(**{**dict(round=3, model_version=2, node_name="alice", blob_size=500, num_samples=10,
                                      metrics={}, providers=[], issued=NOW - 1, expires=NOW + 599), **kw})


def reason(fn, *args) -> str | None:
    try:
        fn(*args)
    except UpdateRejected as exc:
        assert str(exc).startswith(exc.reason)
        return exc.reason
    return None


def test_valid_record_passes():
    assert reason(check_record, record(), ALICE.public_key, CONFIG, ANN, NOW) is None
    assert reason(check_record, record(shard=1), ALICE.public_key, CONFIG, ANN, NOW) is None  # its assigned shard
    assert reason(check_record, record(blob_size=1000), ALICE.public_key, CONFIG, ANN, NOW) is None


@pytest.mark.parametrize(
    "changes, signer, expected",
    [
        ({}, EVE.public_key, "unknown_key"),
        ({"job_id": "other"}, ALICE.public_key, "wrong_job"),
        ({"round": 2}, ALICE.public_key, "wrong_round"),
        ({"round": 4}, ALICE.public_key, "wrong_round"),
        ({"model_version": 1}, ALICE.public_key, "wrong_model_version"),
        ({}, BOB.public_key, "not_selected"),
        ({"shard": 0}, ALICE.public_key, "wrong_shard"),  # the round assigned alice shard 1
        ({"blob_size": 1001}, ALICE.public_key, "oversize"),
        ({"num_samples": 0}, ALICE.public_key, "no_samples"),
        ({"num_samples": 5001}, ALICE.public_key, "too_many_samples"),
        ({"issued": NOW - 700, "expires": NOW - 100}, ALICE.public_key, "expired"),
        ({"issued": NOW + 31, "expires": NOW + 600}, ALICE.public_key, "from_future"),
        ({"issued": NOW, "expires": NOW + 86400}, ALICE.public_key, "ttl_too_long"),
    ],
)
def test_each_rejection_reason(changes, signer, expected):
    assert reason(check_record, record(**changes), signer, CONFIG, ANN, NOW) == expected


def test_no_open_round_is_wrong_round():
    assert reason(check_record, record(), ALICE.public_key, CONFIG, None, NOW) == "wrong_round"


def test_open_job_admits_any_key():
    open_cfg = parse_config({"job_id": "job", "admission": {"open": True}})
    ann = ANN.model_copy(update={"selected": [EVE.public_key]})
    assert reason(check_record, record(), EVE.public_key, open_cfg, ann, NOW) is None


def reference() -> dict[str, torch.Tensor]:
    return {"w": torch.zeros(3, 2), "b": torch.zeros(2)}


def test_norm_bound():
    big = {"w": torch.full((3, 2), 10.0), "b": torch.zeros(2)}  # norm = sqrt(6 * 100) ~ 24.5
    check_tensors(big, reference(), max_norm=25.0)
    with pytest.raises(UpdateRejected) as info:
        check_tensors(big, reference(), max_norm=24.0)
    assert info.value.reason == "norm_too_large"
    check_tensors(big, reference(), max_norm=0.0)  # 0 disables the bound


def test_valid_tensors_pass():
    check_tensors({"w": torch.randn(3, 2), "b": torch.randn(2)}, reference())


@pytest.mark.parametrize(
    "delta, expected, detail",
    [
        ({"w": torch.zeros(3, 2)}, "wrong_tensors", "missing ['b']"),
        ({"w": torch.zeros(3, 2), "b": torch.zeros(2), "x": torch.zeros(1)}, "wrong_tensors", "unexpected ['x']"),
        ({"w": torch.zeros(2, 3), "b": torch.zeros(2)}, "wrong_shape", "w"),
        ({"w": torch.zeros(6), "b": torch.zeros(2)}, "wrong_shape", "w"),
        ({"w": torch.zeros(3, 2), "b": torch.zeros(2, dtype=torch.float64)}, "wrong_dtype", "b"),
        ({"w": torch.zeros(3, 2), "b": torch.zeros(2, dtype=torch.float16)}, "wrong_dtype", "b"),
        ({"w": torch.tensor([[0.0, float("nan")], [0, 0], [0, 0]]), "b": torch.zeros(2)}, "not_finite", "w"),
        ({"w": torch.zeros(3, 2), "b": torch.tensor([float("inf"), 0.0])}, "not_finite", "b"),
        ({"w": torch.zeros(3, 2), "b": torch.tensor([0.0, float("-inf")])}, "not_finite", "b"),
    ],
)
def test_tensor_rejections(delta, expected, detail):
    with pytest.raises(UpdateRejected) as info:
        check_tensors(delta, reference())
    assert info.value.reason == expected
    assert detail in info.value.detail
