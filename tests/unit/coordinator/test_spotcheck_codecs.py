"""Spot checks under codecs: they start from the model as trainers decoded it, compare against the
recomputed delta put through the update codec, and are inconclusive with top-k's private residual."""

from __future__ import annotations

import pytest
import torch

from prime import codecs
from prime.coordinator.spotcheck import SpotChecker
from prime.core.config import parse_config
from prime.tasks import task_of
from prime.trainer.distributed import close_process_group
from prime.trainer.engine import LocalEngine, LocalWork, RoundKey


def job(update, model="bf16"):
    return parse_config({
        "job_id": "spot-codecs", "data": {"num_shards": 3},
        "task": {"name": "digits", "options": {"hidden": [32]}},
        "training": {"batch_size": 16, "learning_rate": 0.05, "optimizer": {"name": "sgd", "momentum": 0.9},
                     "reproducible_rounds": True},
        "federated": {"local_steps": 6}, "compression": {"update": update, "model": model},
        "verification": {"spot_check_rate": 1.0, "tolerance": 1e-3}})


@pytest.fixture(scope="module", autouse=True)
def _process_group():
    yield
    close_process_group()


def honest_round(config):
    """Round 2 on shard 0 as a trainer runs it: from the decoded broadcast, its delta encoded and decoded."""
    task = task_of(config)
    engine = LocalEngine(task, config.training)
    engine.use_shard(0, 3)
    master = {k: v + 0.01 for k, v in engine.global_state().items()}
    received = codecs.roundtrip(codecs.from_config(config.compression.model), master)
    delta, _ = engine.train(received, LocalWork.of(config.federated), round_key=RoundKey(config.job_id, 2, 0))
    update = codecs.from_config(config.compression.update)
    blob = b"".join(codecs.encode(update, delta))
    return task, master, received, codecs.open_update(blob, max_bytes=1 << 24, expect=update)


def test_int8_update_from_a_bf16_model_passes_from_what_trainers_received():
    config = job("int8")
    task, master, received, sent = honest_round(config)
    checker = SpotChecker(config, task)
    try:
        assert checker.unverifiable() is None
        good = checker.check(received, sent, 0, 3, 2)
        assert good.passed and good.distance < 1e-5, good
        forged = {k: -sent[k] for k in sent}
        assert checker.check(received, forged, 0, 3, 2).failed
        # from the fp32 master instead (what trainers never saw) the recomputation lands elsewhere
        assert checker.check(master, sent, 0, 3, 2).distance > good.distance
    finally:
        checker.close()


def test_topk_updates_are_inconclusive_never_failed():
    config = job({"name": "topk", "fraction": 0.1})
    task, _, received, sent = honest_round(config)
    checker = SpotChecker(config, task)
    try:
        verdict = checker.check(received, sent, 0, 3, 2)
        assert verdict.inconclusive and "error feedback" in verdict.inconclusive and not verdict.failed
    finally:
        checker.close()
