"""DiLoCo's inner optimizer (AdamW) stays local across rounds and is in the trainer checkpoint.

A round loads the announced global weights but not an optimizer: the AdamW moments and step
count carry over from the trainer's earlier rounds (unless ``training.reproducible_rounds``),
and a trainer restored from its checkpoint computes the next round bit for bit as the one
that never stopped."""

from __future__ import annotations

import pytest
import torch

from prime.core.config import OptimizerName, parse_config
from prime.tasks import task_of
from prime.trainer.checkpoint import CheckpointStore
from prime.trainer.distributed import close_process_group
from prime.trainer.engine import LocalEngine, LocalWork, build_optimizer

JOB = {
    "task": {"name": "digits", "options": {"hidden": [16]}},
    "data": {"num_shards": 4},
    "training": {"batch_size": 16, "learning_rate": 0.01, "seed": 4},
    "federated": {"local_steps": 5, "aggregation": {"name": "fedtrimmedavg", "outer": "diloco"}},
}
CONFIG = parse_config(JOB)
TASK = task_of(CONFIG)
H = LocalWork.of(CONFIG.federated)


@pytest.fixture(scope="module", autouse=True)
def _process_group():
    yield
    close_process_group()


def engine() -> LocalEngine:
    eng = LocalEngine(TASK, CONFIG.training)
    eng.use_shard(2, 4)
    return eng


def moments(eng: LocalEngine) -> list[tuple[int, torch.Tensor]]:
    return [(int(s["step"]), s["exp_avg"].clone()) for s in eng.optimizer.state.values()]


def shifted(state: dict, by: float) -> dict:
    return {k: v + by for k, v in state.items()}


def test_the_diloco_job_trains_with_adamw_and_keeps_its_state_across_rounds() -> None:
    assert CONFIG.training.optimizer.name is OptimizerName.ADAMW
    eng = engine()
    assert isinstance(eng.optimizer, torch.optim.AdamW)
    glob = eng.global_state()
    eng.train(glob, H)
    after_one = moments(eng)
    assert all(step == 5 and float(m.abs().max()) > 0 for step, m in after_one)
    new_global = shifted(glob, 0.01)  # round 2 announces another model: the optimizer is not reset
    kept, _ = eng.train(new_global, H)
    assert all(step == 10 for step, _ in moments(eng))
    forgetful = engine()  # the same round 1, then its moments lost: what a per-round optimizer would be
    forgetful.train(glob, H)
    forgetful.optimizer = build_optimizer(forgetful.model.parameters(), CONFIG.training, forgetful.device)
    reset, _ = forgetful.train(new_global, H)
    assert not all(torch.equal(kept[k], reset[k]) for k in kept)  # the kept state changed the round


def test_a_restored_trainer_resumes_its_inner_optimizer(tmp_path) -> None:
    running = engine()
    glob = running.global_state()
    running.train(glob, H)
    store = CheckpointStore(tmp_path / "checkpoints")
    store.save("auto-000001", {"engine": running.state_dict(), "last_submitted_round": 1})  # what the node saves
    restored = engine()
    restored.load_state_dict(store.load("auto-000001")["engine"])
    assert [s for s, _ in moments(restored)] == [s for s, _ in moments(running)]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(moments(restored), moments(running)))
    new_global = shifted(glob, 0.01)
    a, _ = running.train(new_global, H)
    b, _ = restored.train(new_global, H)
    assert all(torch.equal(a[k], b[k]) for k in a)
