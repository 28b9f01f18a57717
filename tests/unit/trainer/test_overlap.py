"""Overlap (one-step-delayed outer update): the rebase arithmetic, when a block trained ahead may be
sent, training on from the current weights (one rank and the other ranks' command), the config
refusals, and the utilization bookkeeping.

The algebra end to end: one trainer under FedAvg (outer step = identity) is continuous local
training whether or not it overlaps; with overlap the global model lags by exactly one block."""

from __future__ import annotations

import asyncio

import pytest
import torch

from prime.core.config import parse_config
from prime.core.errors import ConfigError, TrainerError
from prime.tasks import task_of
from prime.trainer import ranks
from prime.trainer.distributed import close_process_group
from prime.trainer.engine import LocalEngine, LocalWork
from prime.trainer.overlap import AheadBlock, rebased
from prime.trainer.ranks import Command, RankChannel
from prime.trainer.utilization import Utilization

JOB = {
    "task": {"name": "digits", "options": {"hidden": [16]}},
    "data": {"num_shards": 4},
    "training": {"batch_size": 16, "learning_rate": 0.01, "seed": 2,
                 "optimizer": {"name": "adamw", "weight_decay": 0.01}},
    "federated": {"local_steps": 4, "overlap": True},
}
CONFIG = parse_config(JOB)
TASK = task_of(CONFIG)
H = LocalWork(steps=4)


@pytest.fixture(scope="module", autouse=True)
def _process_group():
    yield
    close_process_group()


def engine() -> LocalEngine:
    eng = LocalEngine(TASK, CONFIG.training)
    eng.use_shard(1, 4)
    return eng


def close(a: dict, b: dict, atol: float = 1e-6) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=0, atol=atol) for k in a)


# -- the arithmetic ------------------------------------------------------------------------------

def test_rebase_is_the_new_global_plus_own_progress() -> None:
    glob = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.5], dtype=torch.float64)}
    progress = {"w": torch.tensor([0.25, -0.5]), "b": torch.tensor([0.125])}
    start = rebased(glob, progress)
    assert torch.equal(start["w"], torch.tensor([1.25, 1.5])) and start["w"].dtype == torch.float32
    assert torch.equal(start["b"], torch.tensor([0.625])) and start["b"].dtype == torch.float32
    assert torch.equal(glob["w"], torch.tensor([1.0, 2.0]))  # inputs untouched
    with pytest.raises(ValueError, match="different tensors"):
        rebased(glob, {"w": progress["w"]})


def test_a_block_is_sent_only_for_the_next_round_on_the_same_shard() -> None:
    async def make() -> AheadBlock:
        return AheadBlock(after_round=3, shard=2, task=asyncio.ensure_future(asyncio.sleep(0)))

    block = asyncio.run(make())
    assert block.unusable_for(4, 2) is None
    assert "followed round 3" in block.unusable_for(5, 2)
    assert "followed round 3" in block.unusable_for(3, 2)
    assert "shard 2" in block.unusable_for(4, 1)


def test_training_on_returns_progress_from_the_current_weights_and_keeps_the_optimizer() -> None:
    eng = engine()
    eng.train(eng.global_state(), H)
    before, moments = eng.global_state(), int(eng.optimizer.state[next(iter(eng.optimizer.state))]["step"])
    progress, metrics = eng.train(None, H)
    after = eng.global_state()
    assert metrics.steps == 4 and eng.steps_done == 8
    assert close({k: before[k] + progress[k] for k in before}, after)
    assert any(float(p.abs().max()) > 0 for p in progress.values())
    assert int(eng.optimizer.state[next(iter(eng.optimizer.state))]["step"]) == moments + 4  # AdamW state kept


def test_one_trainer_under_fedavg_overlapped_or_not_is_continuous_training() -> None:
    """x_{r+1} = x_r + update_r (FedAvg, one trainer). Not overlapped, the trainer restarts each round from
    x_{r+1} = its own weights; overlapped, it sends block r's progress at round r and rebases onto x_r +
    progress: both equal R·H continuous steps (up to float rounding), the overlapped global one block behind."""
    continuous = engine()
    marks = [continuous.global_state()]
    for _ in range(4):
        continuous.train(None, H)
        marks.append(continuous.global_state())

    plain = engine()
    x = plain.global_state()
    for _ in range(4):
        delta, _ = plain.train(x, H)
        x = {k: x[k] + delta[k] for k in x}
    assert close(x, marks[4], 1e-5)

    overlapped = engine()
    x = overlapped.global_state()
    update, _ = overlapped.train(x, H)  # round 1, not overlapped: from the announced global
    start = None  # the block after it trains on from the trainer's own weights
    for r in range(2, 5):  # rounds 2..4: each sends the block trained ahead
        progress, _ = overlapped.train(start, H)
        x = {k: x[k] + update[k] for k in x}  # round r-1's commit: x_r
        update, start = progress, rebased(x, progress)
        assert close(x, marks[r - 1], 1e-5)  # the global: one block behind the trainer
        assert close(start, overlapped.global_state(), 1e-5)  # the rebase keeps the trainer where it was
        assert close(start, marks[r], 1e-5)


def test_train_on_reaches_the_other_ranks_as_its_own_command(monkeypatch) -> None:
    sent: list[torch.Tensor] = []
    monkeypatch.setattr(ranks.dist, "broadcast", lambda tensor, src: sent.append(tensor.clone()))
    leader = engine()
    leader.channel = RankChannel(0, 2, torch.device("cpu"))
    leader.train(None, H)
    assert len(sent) == 1 and sent[0].tolist()[:3] == [int(Command.TRAIN_ON), 1, 4]

    queue = [sent[0], torch.tensor([int(Command.STOP)] + [0] * ranks._ARGS)]
    monkeypatch.setattr(ranks.dist, "broadcast", lambda tensor, src: tensor.copy_(queue.pop(0)))
    follower = engine()
    follower.channel = RankChannel(1, 2, torch.device("cpu"))
    followed = []
    follower._train = lambda s, w, plan: followed.append((s, w, plan))
    follower.follow()
    assert followed == [(None, H, None)]


def test_reproducible_rounds_never_train_on_from_own_weights() -> None:
    training = parse_config({**JOB, "federated": {"local_steps": 4},
                             "training": {**JOB["training"], "reproducible_rounds": True}}).training
    eng = LocalEngine(TASK, training)
    eng.use_shard(0, 4)
    with pytest.raises(TrainerError, match="reproducible round starts from the announced global"):
        eng.train(None, H)


# -- config ------------------------------------------------------------------------------------

@pytest.mark.parametrize("job, message", [
    ({"federated": {"overlap": True}}, "federated.overlap needs federated.local_steps > 0"),
    ({"federated": {"overlap": True, "local_steps": 5, "aggregation": {"name": "fedprox"}}},
     "federated.overlap does not combine with fedprox"),
    ({"federated": {"overlap": True, "local_steps": 5}, "training": {"reproducible_rounds": True}},
     "federated.overlap does not combine with training.reproducible_rounds"),
    ({"federated": {"overlap": True, "local_steps": 5}, "training": {"reproducible_rounds": True},
      "verification": {"spot_check_rate": 0.5}}, "federated.overlap does not combine with training.reproducible"),
])
def test_overlap_refuses_what_it_cannot_work_with(job: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse_config(job, "job.toml")


def test_overlap_is_an_agreed_term() -> None:
    from prime.core.agreement import job_terms

    assert job_terms(CONFIG, {})["federated"]["overlap"] is True
    assert job_terms(parse_config({}), {})["federated"]["overlap"] is False


# -- utilization -------------------------------------------------------------------------------

def test_utilization_counts_from_the_previous_submission() -> None:
    use = Utilization()
    first = use.submitted(1, inner_seconds=2.0, began=10.0, now=14.0, overlapped=False)  # took round 1 up at 10
    assert (first.wall_seconds, first.fraction) == (4.0, 0.5)
    second = use.submitted(2, inner_seconds=3.0, began=15.5, now=17.0, overlapped=True)  # since round 1's submission
    assert (second.wall_seconds, second.fraction) == (3.0, 1.0)
    gap = use.submitted(5, inner_seconds=1.0, began=30.0, now=32.0, overlapped=False)  # rounds 3-4 not taken
    assert gap.wall_seconds == 2.0
    metrics = use.metrics()
    assert metrics["fraction"] == pytest.approx(6.0 / 9.0)
    assert [r["round"] for r in metrics["rounds"]] == [1, 2, 5] and metrics["rounds"][1]["overlapped"]
