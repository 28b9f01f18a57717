"""LocalEngine: real FSDP2 on CPU in one process (a one-rank gloo group), on a real digits shard.

(Several ranks: ``tests/integration/test_multi_rank.py`` runs a real ``torchrun``.)"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from prime.core.config import OptimizerName, TrainingConfig, parse_config
from prime.core.errors import TrainerError
from prime.tasks import Shard, task_of
from prime.trainer.checkpoint import CheckpointStore
from prime.trainer.distributed import close_process_group
from prime.trainer.engine import LocalEngine, LocalWork, build_optimizer, learning_rate, state_mismatch

CONFIG = parse_config({
    "task": {"name": "digits", "options": {"hidden": [32], "dirichlet_alpha": 1.0}},
    "data": {"num_shards": 4},
    "training": {"batch_size": 32, "learning_rate": 0.1, "seed": 5,
                 "scheduler": {"name": "cosine", "t_max": 200, "eta_min": 0.01}},
})
TASK = task_of(CONFIG)
EPOCH = LocalWork(epochs=1)


def build_model(seed: int = 0) -> nn.Module:
    return TASK.build_model(seed)


def new_engine(model: nn.Module | None = None, training: TrainingConfig = CONFIG.training) -> LocalEngine:
    engine = LocalEngine(TASK, training, model)
    engine.use_shard(0, 4)
    return engine


@pytest.fixture(scope="module")
def shard():
    return TASK.load_shard(Shard(0, 4))


@pytest.fixture(scope="module")
def engine(shard):
    eng = new_engine()
    yield eng
    close_process_group()


def training(**kw) -> TrainingConfig:
    return parse_config({"training": kw}).training


# -- schedule and optimizer (pure) --------------------------------------------------------

def test_constant_learning_rate():
    cfg = training(learning_rate=0.3)
    assert [learning_rate(cfg, e) for e in (0, 1, 50, 10**6)] == [0.3] * 4


def test_warmup_then_cosine_per_step():
    cfg = training(learning_rate=0.2, scheduler={"name": "cosine", "warmup_steps": 4, "t_max": 10, "eta_min": 0.0})
    assert [learning_rate(cfg, s) for s in range(4)] == pytest.approx([0.05, 0.1, 0.15, 0.2])
    assert learning_rate(cfg, 4) == pytest.approx(0.2)  # decay starts after warmup
    assert learning_rate(cfg, 9) == pytest.approx(0.1)
    assert learning_rate(cfg, 14) == pytest.approx(0.0, abs=1e-12) and learning_rate(cfg, 99) == pytest.approx(0.0, abs=1e-12)
    constant = training(learning_rate=0.2, scheduler={"warmup_steps": 2})
    assert [learning_rate(constant, s) for s in range(4)] == pytest.approx([0.1, 0.2, 0.2, 0.2])


def test_cosine_learning_rate():
    cfg = training(learning_rate=0.2, scheduler={"name": "cosine", "t_max": 10, "eta_min": 0.02})
    assert learning_rate(cfg, 0) == pytest.approx(0.2, abs=1e-15)
    assert learning_rate(cfg, 10) == pytest.approx(0.02, abs=1e-15)
    assert learning_rate(cfg, 5) == pytest.approx(0.11)
    assert learning_rate(cfg, 1) == pytest.approx(0.02 + 0.18 * (1 + math.cos(math.pi / 10)) / 2)
    lrs = [learning_rate(cfg, e) for e in range(11)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert learning_rate(cfg, 25) == pytest.approx(0.02)  # clamped after t_max


def test_build_optimizer_uses_config():
    params = list(nn.Linear(2, 2).parameters())
    cpu = torch.device("cpu")
    sgd = build_optimizer(params, training(learning_rate=0.3, optimizer={"name": "sgd", "momentum": 0.5,
                                                                         "weight_decay": 0.01}), cpu)
    assert isinstance(sgd, torch.optim.SGD)
    g = sgd.param_groups[0]
    assert (g["lr"], g["momentum"], g["weight_decay"]) == (0.3, 0.5, 0.01)
    adam = build_optimizer(params, training(optimizer={"name": "adam", "beta1": 0.8, "beta2": 0.95}), cpu)
    assert type(adam) is torch.optim.Adam and adam.param_groups[0]["betas"] == (0.8, 0.95)
    adamw = build_optimizer(params, training(optimizer={"name": "adamw", "weight_decay": 0.2}), cpu)
    assert type(adamw) is torch.optim.AdamW and adamw.param_groups[0]["weight_decay"] == 0.2
    assert training(optimizer={"name": "adamw"}).optimizer.name is OptimizerName.ADAMW


# -- the engine ---------------------------------------------------------------------------

def _snapshot(engine) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in engine.global_state().items()}


def _loss(state: dict[str, torch.Tensor], shard) -> float:
    model = build_model()
    model.load_state_dict(state)
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(shard.x), shard.y))


def test_global_state_is_initial_model(engine):
    expected = build_model(CONFIG.training.seed).state_dict()
    state = engine.global_state()
    assert list(state) == list(expected)
    for k, v in state.items():
        assert type(v) is torch.Tensor and v.device.type == "cpu"
        assert torch.equal(v, expected[k])


def test_global_state_is_a_snapshot(engine):
    """global_state() promises plain CPU tensors; they must not alias the live parameters."""
    state = engine.global_state()
    copy = {k: v.clone() for k, v in state.items()}
    engine.train(_snapshot(engine), EPOCH)
    changed = [k for k in state if not torch.equal(state[k], copy[k])]
    assert changed == []


def test_training_from_own_global_state_gives_real_delta(engine):
    delta, _ = engine.train(engine.global_state(), EPOCH)
    assert any(float(d.abs().max()) > 0 for d in delta.values())


def test_training_reduces_loss_and_delta_matches(engine, shard):
    start = _snapshot(engine)
    before = _loss(start, shard)
    epochs_before = engine.epochs_done
    steps_before = engine.steps_done
    delta, metrics = engine.train(start, LocalWork(epochs=4))
    assert engine.epochs_done == epochs_before + 4
    assert set(delta) == set(start)
    for k in start:
        assert delta[k].shape == start[k].shape and delta[k].dtype == start[k].dtype
    end = _snapshot(engine)
    for k in start:
        torch.testing.assert_close(start[k] + delta[k], end[k])
    assert any(float(d.abs().max()) > 0 for d in delta.values())
    after = _loss(end, shard)
    assert after < before * 0.7, (before, after)
    assert metrics.num_samples == 4 * len(shard)
    assert metrics.steps == engine.steps_done - steps_before == 4 * -(-len(shard) // 32)  # short last batch kept
    assert metrics.samples_per_second > 0 and metrics.seconds > 0
    assert metrics.loss < before
    # the schedule was applied per step: the last step's rate
    assert engine.optimizer.param_groups[0]["lr"] == pytest.approx(learning_rate(CONFIG.training, engine.steps_done - 1))


def test_a_round_times_its_state_load_and_its_gather_apart(engine):
    _, metrics = engine.train(build_model(1).state_dict(), LocalWork(steps=2))
    assert metrics.load_seconds > 0 and metrics.gather_seconds > 0 and metrics.seconds > 0


def test_train_from_given_start_ignores_current_weights(engine):
    start = {k: torch.zeros_like(v) for k, v in engine.global_state().items()}
    delta, _ = engine.train(start, EPOCH)
    end = _snapshot(engine)
    for k in start:
        torch.testing.assert_close(delta[k], end[k])


def test_state_dict_round_trip_restores_weights_optimizer_and_epochs(engine, shard, tmp_path):
    engine.train(_snapshot(engine), EPOCH)
    saved = engine.state_dict()
    saved = {**saved, "model": {k: v.clone() for k, v in saved["model"].items()}}
    assert saved["position"] == engine.position.as_list() and saved["steps_done"] == engine.steps_done
    # through a real checkpoint file (weights_only load)
    store = CheckpointStore(tmp_path)
    store.save("round-000001", saved)
    restored_state = store.load("round-000001")

    other = new_engine(build_model(99))
    assert not all(torch.equal(other.global_state()[k], saved["model"][k]) for k in saved["model"])
    other.load_state_dict(restored_state)
    assert other.position == engine.position and other.steps_done == engine.steps_done
    for k, v in saved["model"].items():
        assert torch.equal(other.global_state()[k], v)
    # identical optimizer state and data position: the next epoch is bit-identical
    start = _snapshot(engine)
    d1, m1 = engine.train(start, EPOCH)
    d2, m2 = other.train(start, EPOCH)
    for k in d1:
        assert torch.equal(d1[k], d2[k]), k
    assert m1.loss == m2.loss and other.epochs_done == engine.epochs_done


def test_momentum_state_matters(engine, shard):
    """Sanity check for the round-trip test: without the optimizer state the next epoch differs."""
    fresh = new_engine()
    saved = engine.state_dict()
    fresh.load_global(saved["model"])
    fresh.position, fresh.steps_done = engine.position, engine.steps_done
    start = _snapshot(engine)
    d1, _ = engine.train(start, EPOCH)
    d2, _ = fresh.train(start, EPOCH)
    assert not all(torch.equal(d1[k], d2[k]) for k in d1)


# -- local steps, accumulation, precision, checkpointing ---------------------------------------

def test_local_steps_count_optimizer_steps_across_epochs(shard):
    engine = new_engine()
    steps = 2 * (len(shard) // 32) + 3  # runs into a third epoch
    _, metrics = engine.train(engine.global_state(), LocalWork(steps=steps))
    assert metrics.steps == steps == engine.steps_done
    assert metrics.num_samples == 32 * steps  # step-counted work drops the short last batch
    assert engine.position.epoch == 2


def test_gradient_accumulation_equals_the_big_batch():
    """Two micro-batches of 16 accumulated are one step on the batch of 32 (plain SGD: exact up to fp)."""
    sgd = {"learning_rate": 0.1, "seed": 5, "optimizer": {"name": "sgd", "momentum": 0.0}}
    big = new_engine(training=training(batch_size=32, **sgd))
    small = new_engine(training=training(batch_size=16, gradient_accumulation=2, **sgd))
    start = big.global_state()
    # The same 32 samples per step: batch order is a function of (seed, epoch), sliced by batch size.
    d_big, m_big = big.train(start, LocalWork(steps=3))
    d_small, m_small = small.train(start, LocalWork(steps=3))
    assert m_big.steps == m_small.steps == 3 and m_big.num_samples == m_small.num_samples == 96
    for k in d_big:
        torch.testing.assert_close(d_big[k], d_small[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("precision, checkpointing", [("bf16", False), ("fp32", True), ("bf16", True)])
def test_bf16_and_activation_checkpointing_train_and_send_fp32(precision, checkpointing):
    base = new_engine()
    recipe = {**CONFIG.training.model_dump(mode="json"), "precision": precision,
              "activation_checkpointing": checkpointing}
    engine = new_engine(training=training(**recipe))
    start = base.global_state()
    reference, _ = base.train(start, LocalWork(steps=5))
    delta, metrics = engine.train(start, LocalWork(steps=5))
    assert all(v.dtype == torch.float32 for v in delta.values())  # fp32 master weights, fp32 delta
    for k in delta:  # the same training up to bf16 rounding; bit-identical when only recomputing activations
        tol = dict(rtol=0, atol=0) if precision == "fp32" else dict(rtol=0.05, atol=2e-3)
        torch.testing.assert_close(delta[k], reference[k], **tol)
    assert engine.global_state().keys() == start.keys()  # checkpointing renames nothing


def test_a_model_that_does_not_match_the_global_state_is_named_not_trained():
    engine = new_engine()
    other = TASK.spec.build_model(TASK.spec.options(hidden=[16]), 0).state_dict()
    with pytest.raises(TrainerError) as caught:
        engine.train(other, EPOCH)
    assert "layers.0.weight: shape (32, 64) here, (16, 64) in the global model" in str(caught.value)
    assert state_mismatch(engine.global_state(), {**engine.global_state(), "extra": torch.zeros(1)}) == [
        "missing in this model: extra"]
    assert engine.steps_done == 0  # nothing was trained
