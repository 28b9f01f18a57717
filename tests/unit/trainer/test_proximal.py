"""FedProx's proximal term in the engine, against a plain PyTorch loop that adds (μ/2)·‖w − w_g‖²
to every micro-batch loss: μ = 0 is that loop bit for bit (the engine as it was), μ > 0 matches
it to fp32 rounding and pulls the update toward the global model."""

from __future__ import annotations

import math

import pytest
import torch

from prime.core.config import parse_config
from prime.core.errors import TrainerError
from prime.tasks import task_of
from prime.trainer.data import DataPosition, global_batches
from prime.trainer.distributed import close_process_group
from prime.trainer.engine import LocalEngine, LocalWork, RoundKey, build_optimizer, learning_rate

CONFIG = parse_config({
    "task": {"name": "digits", "options": {"hidden": [32]}},
    "data": {"num_shards": 4},
    "training": {"batch_size": 16, "gradient_accumulation": 2, "learning_rate": 0.1, "seed": 1,
                 "optimizer": {"name": "sgd", "momentum": 0.9}, "scheduler": {"name": "cosine", "t_max": 50}},
})
TASK = task_of(CONFIG)
WORK = LocalWork(steps=7)


@pytest.fixture(scope="module", autouse=True)
def _process_group():
    yield
    close_process_group()


def train(mu: float, start=None, training=CONFIG.training, **kw):
    engine = LocalEngine(TASK, training, proximal_mu=mu)
    engine.use_shard(1, 4)
    start = start if start is not None else engine.global_state()
    delta, _ = engine.train(start, WORK, **kw)
    return engine, start, delta


def reference(mu: float, start: dict, data) -> dict:
    """The textbook loop: the term added to each micro-batch loss, gradients through autograd."""
    cfg = CONFIG.training
    model = TASK.build_model(0)
    model.load_state_dict(start)
    optimizer = build_optimizer(model.parameters(), cfg, torch.device("cpu"))
    anchor = [p.detach().clone() for p in model.parameters()]
    batches = global_batches(len(data), cfg.batch_size, cfg.seed, DataPosition(), drop_last=True)
    for step in range(WORK.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step)
        for _ in range(cfg.gradient_accumulation):
            index = next(batches).index
            loss = TASK.loss(model, data.x[index], data.y[index])
            if mu:
                loss = loss + mu / 2 * sum((p - a).pow(2).sum() for p, a in zip(model.parameters(), anchor))
            (loss / cfg.gradient_accumulation).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {k: v.detach() - start[k] for k, v in model.state_dict().items()}


def norm(delta: dict) -> float:
    return math.sqrt(sum(float(v.double().pow(2).sum()) for v in delta.values()))


def test_mu_zero_is_the_plain_loop_bit_for_bit():
    engine, start, delta = train(0.0)
    expected = reference(0.0, start, engine.data)
    assert all(torch.equal(delta[k], expected[k]) for k in delta)


def test_mu_is_the_loss_term_and_shrinks_the_update():
    engine, start, plain = train(0.0)
    _, _, pulled = train(0.5, start)
    expected = reference(0.5, start, engine.data)
    for k in pulled:
        torch.testing.assert_close(pulled[k], expected[k], rtol=1e-5, atol=1e-6)
    assert norm(pulled) < 0.95 * norm(plain)
    _, _, strong = train(5.0, start)
    assert norm(strong) < norm(pulled)


def test_proximal_term_in_reproducible_rounds_is_deterministic():
    training = CONFIG.training.model_copy(update={"reproducible_rounds": True})
    key = RoundKey("job", 2, 1)
    _, start, d1 = train(0.5, training=training, round_key=key)
    _, _, d2 = train(0.5, start, training=training, round_key=key)
    assert all(torch.equal(d1[k], d2[k]) for k in d1)


def test_negative_mu_is_refused():
    with pytest.raises(TrainerError, match="proximal_mu"):
        LocalEngine(TASK, CONFIG.training, proximal_mu=-0.1)
