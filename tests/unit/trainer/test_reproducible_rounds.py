"""Reproducible rounds: a round is a pure function of (global state, job, round, shard, config).

What a verifier relies on: two fresh engines given the same round key compute bit-identical
deltas; an engine that trained other rounds before computes the same one (fresh optimizer, the
schedule where the round is, the round's own batch order); and the round's integers reach a
node's other ranks through the real ``RankChannel`` message layout."""

from __future__ import annotations

import pytest
import torch

from prime.core.config import TrainingConfig, parse_config
from prime.core.errors import TrainerError
from prime.tasks import task_of
from prime.trainer import ranks
from prime.trainer.data import DataPosition, batches_per_epoch, epoch_order, global_batches, round_seed
from prime.trainer.distributed import close_process_group
from prime.trainer.engine import LocalEngine, LocalWork, RoundKey, learning_rate
from prime.trainer.ranks import Command, RankChannel

JOB = {
    "job_id": "repro-job",
    "task": {"name": "digits", "options": {"hidden": [32]}},
    "data": {"num_shards": 4},
    "training": {"reproducible_rounds": True, "batch_size": 16, "gradient_accumulation": 2, "learning_rate": 0.1,
                 "seed": 3, "optimizer": {"name": "sgd", "momentum": 0.9},
                 "scheduler": {"name": "cosine", "warmup_steps": 2, "t_max": 60, "eta_min": 0.001}},
}
CONFIG = parse_config(JOB)
TASK = task_of(CONFIG)
STEPS = LocalWork(steps=5)
EPOCHS = LocalWork(epochs=2)


@pytest.fixture(scope="module", autouse=True)
def _process_group():
    yield
    close_process_group()


def engine(shard: int = 0, training: TrainingConfig = CONFIG.training, **kw) -> LocalEngine:
    eng = LocalEngine(TASK, training, **kw)
    eng.use_shard(shard, 4)
    return eng


def key(round_number: int, shard: int = 0, job: str = "repro-job") -> RoundKey:
    return RoundKey(job, round_number, shard)


def identical(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def start() -> dict[str, torch.Tensor]:
    return engine().global_state()


# -- the batch order -------------------------------------------------------------------------

def test_round_seed_is_a_63_bit_hash_of_public_inputs():
    seed = round_seed("job", 2, 1, 0)
    assert seed == round_seed("job", 2, 1, 0) and 0 <= seed < 2**63
    others = {round_seed("job", 3, 1, 0), round_seed("job", 2, 0, 0), round_seed("jab", 2, 1, 0),
              round_seed("job", 2, 1, 1)}
    assert seed not in others and len(others) == 4
    assert len(epoch_order(50, seed, 0)) == 50  # a 63-bit seed fits the generator's arithmetic


def test_epoch_order_of_ordinary_seeds_is_unchanged():
    """Seeds below 2**64 (every seed torch took before) give the same order as the plain formula."""
    for seed, epoch in ((0, 0), (5, 3), (-7, 1), (2**40, 2)):
        expected = torch.randperm(40, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        assert torch.equal(epoch_order(40, seed, epoch), expected)


def test_batches_per_epoch_matches_the_stream():
    for n, size, drop in ((103, 16, False), (103, 16, True), (96, 16, False)):
        stream = global_batches(n, size, 0, DataPosition(), drop_last=drop)
        count = 1
        while not next(stream).last:
            count += 1
        assert batches_per_epoch(n, size, drop_last=drop) == count
    with pytest.raises(TrainerError, match="fewer than one batch"):
        batches_per_epoch(10, 16, drop_last=True)


# -- determinism ------------------------------------------------------------------------------

@pytest.mark.parametrize("work", [STEPS, EPOCHS], ids=["steps", "epochs"])
def test_two_fresh_engines_compute_the_same_round_bit_for_bit(start, work):
    d1, m1 = engine().train(start, work, round_key=key(3))
    d2, m2 = engine().train(start, work, round_key=key(3))
    assert identical(d1, d2) and m1.loss == m2.loss and m1.num_samples == m2.num_samples
    d3, _ = engine().train(start, work, round_key=key(4))
    assert not identical(d1, d3)  # another round: another batch order and schedule step
    d4, _ = engine().train(start, work, round_key=key(3, job="another-job"))
    assert not identical(d1, d4)


def test_history_does_not_leak_into_a_round(start):
    """Momentum, schedule step and data position of earlier rounds do not carry over."""
    veteran = engine()
    for r in (1, 2, 7):
        veteran.train(start, STEPS, round_key=key(r))
    assert veteran.optimizer.state  # SGD momentum buffers exist after training...
    d_veteran, _ = veteran.train(start, STEPS, round_key=key(3))
    d_fresh, _ = engine().train(start, STEPS, round_key=key(3))
    assert identical(d_veteran, d_fresh)  # ...yet round 3 starts from a fresh optimizer


def test_each_round_gets_a_fresh_optimizer(start):
    eng = engine()
    eng.train(start, STEPS, round_key=key(1))
    first = eng.optimizer
    eng.train(start, STEPS, round_key=key(2))
    assert eng.optimizer is not first
    assert eng.model.parameters().__next__() in [p for g in eng.optimizer.param_groups for p in g["params"]]


def test_schedule_starts_where_a_trainer_that_took_every_round_would_be(start):
    eng = engine()
    assert eng.steps_per_round(STEPS) == 5
    _, metrics = eng.train(start, STEPS, round_key=key(4))
    assert metrics.steps == 5 and eng.steps_done == 4 * 5
    assert eng.optimizer.param_groups[0]["lr"] == pytest.approx(learning_rate(CONFIG.training, 3 * 5 + 4))
    # Epoch work: an epoch of full batches (drop_last), in groups of gradient_accumulation, per epoch.
    micro = len(eng.data) // 16
    per_round = 2 * -(-micro // 2)
    assert eng.steps_per_round(EPOCHS) == per_round
    _, metrics = eng.train(start, EPOCHS, round_key=key(3))
    assert metrics.steps == per_round and eng.steps_done == 3 * per_round
    assert metrics.num_samples == 2 * micro * 16  # the short last batch is dropped, epochs too


def test_epochs_still_count_for_max_epochs(start):
    eng = engine()
    for r in (1, 2):
        eng.train(start, EPOCHS, round_key=key(r))
    assert eng.epochs_done == 4


def test_key_is_required_in_reproducible_mode_and_ignored_otherwise(start):
    eng = engine()
    with pytest.raises(TrainerError, match="round_key"):
        eng.train(start, STEPS)
    with pytest.raises(TrainerError, match="rounds count from 1"):
        eng.train(start, STEPS, round_key=key(0))
    with pytest.raises(TrainerError, match="rounds count from 1"):
        eng.train(start, STEPS, round_key=key(1, shard=-1))
    assert eng.steps_done == 0  # nothing was trained
    plain = CONFIG.training.model_copy(update={"reproducible_rounds": False})
    d1, _ = engine(training=plain).train(start, STEPS)
    d2, _ = engine(training=plain).train(start, STEPS, round_key=key(9))
    assert identical(d1, d2)


# -- several ranks: the round's integers in the real command layout ------------------------------

def test_train_command_carries_the_round_plan_to_other_ranks(start, monkeypatch):
    """Rank 0 leads TRAIN through a real ``RankChannel`` (broadcast captured); a follower fed the
    same message plans the same round."""
    sent: list[torch.Tensor] = []
    monkeypatch.setattr(ranks.dist, "broadcast", lambda tensor, src: sent.append(tensor.clone()))
    leader = engine()
    leader.channel = RankChannel(0, 2, torch.device("cpu"))
    planned = []
    real_train = leader._train
    leader._train = lambda s, w, plan: planned.append(plan) or real_train(s, w, plan)
    leader.train(start, STEPS, round_key=key(6, shard=2))
    assert len(sent) == 1 and sent[0].dtype == torch.int64 and len(sent[0]) == 1 + ranks._ARGS

    queue = [sent[0], torch.tensor([int(Command.STOP)] + [0] * ranks._ARGS)]
    monkeypatch.setattr(ranks.dist, "broadcast", lambda tensor, src: tensor.copy_(queue.pop(0)))
    follower = engine()
    follower.channel = RankChannel(1, 2, torch.device("cpu"))
    followed = []
    follower._train = lambda s, w, plan: followed.append((w, plan))
    follower.follow()
    assert followed == [(STEPS, planned[0])]
    assert planned[0].order_seed == key(6, shard=2).order_seed(CONFIG.training.seed)
    assert planned[0].start_step == 5 * 5
