"""LocalEngine: real FSDP2 on CPU in one process (a one-rank gloo group), on a real digits shard."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from prime.core.config import OptimizerName, TrainingConfig, parse_config
from prime.core.models import build_model
from prime.trainer.checkpoint import CheckpointStore
from prime.trainer.data import load_local_data
from prime.trainer.distributed import close_process_group
from prime.trainer.engine import LocalEngine, build_optimizer, learning_rate

CONFIG = parse_config({
    "model": {"hidden": [32]},
    "data": {"num_partitions": 4, "dirichlet_alpha": 1.0},
    "training": {"batch_size": 32, "learning_rate": 0.1, "seed": 5,
                 "scheduler": {"name": "cosine", "t_max": 20, "eta_min": 0.01}},
})


@pytest.fixture(scope="module")
def shard():
    return load_local_data(CONFIG.data, 0)


@pytest.fixture(scope="module")
def engine(shard):
    eng = LocalEngine(CONFIG, shard)
    yield eng
    close_process_group()


def training(**kw) -> TrainingConfig:
    return parse_config({"training": kw}).training


# -- schedule and optimizer (pure) --------------------------------------------------------

def test_constant_learning_rate():
    cfg = training(learning_rate=0.3)
    assert [learning_rate(cfg, e) for e in (0, 1, 50, 10**6)] == [0.3] * 4


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
    sgd = build_optimizer(params, training(learning_rate=0.3, optimizer={"name": "sgd", "momentum": 0.5,
                                                                         "weight_decay": 0.01}))
    assert isinstance(sgd, torch.optim.SGD)
    g = sgd.param_groups[0]
    assert (g["lr"], g["momentum"], g["weight_decay"]) == (0.3, 0.5, 0.01)
    adam = build_optimizer(params, training(optimizer={"name": "adam", "beta1": 0.8, "beta2": 0.95}))
    assert type(adam) is torch.optim.Adam and adam.param_groups[0]["betas"] == (0.8, 0.95)
    adamw = build_optimizer(params, training(optimizer={"name": "adamw", "weight_decay": 0.2}))
    assert type(adamw) is torch.optim.AdamW and adamw.param_groups[0]["weight_decay"] == 0.2
    assert training(optimizer={"name": "adamw"}).optimizer.name is OptimizerName.ADAMW


# -- the engine ---------------------------------------------------------------------------

def _snapshot(engine) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in engine.global_state().items()}


def _loss(state: dict[str, torch.Tensor], shard) -> float:
    model = build_model(CONFIG.model)
    model.load_state_dict(state)
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(shard.x), shard.y))


def test_global_state_is_initial_model(engine):
    expected = build_model(CONFIG.model, seed=CONFIG.training.seed).state_dict()
    state = engine.global_state()
    assert list(state) == list(expected)
    for k, v in state.items():
        assert type(v) is torch.Tensor and v.device.type == "cpu"
        assert torch.equal(v, expected[k])


def test_global_state_is_a_snapshot(engine):
    """global_state() promises plain CPU tensors; they must not alias the live parameters."""
    state = engine.global_state()
    copy = {k: v.clone() for k, v in state.items()}
    engine.train_epochs(_snapshot(engine), 1)
    changed = [k for k in state if not torch.equal(state[k], copy[k])]
    assert changed == []


def test_training_from_own_global_state_gives_real_delta(engine):
    delta, _ = engine.train_epochs(engine.global_state(), 1)
    assert any(float(d.abs().max()) > 0 for d in delta.values())


def test_training_reduces_loss_and_delta_matches(engine, shard):
    start = _snapshot(engine)
    before = _loss(start, shard)
    epochs_before = engine.epochs_done
    delta, metrics = engine.train_epochs(start, 4)
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
    assert metrics.num_samples == len(shard)
    assert 0.0 <= metrics.accuracy <= 1.0 and metrics.samples_per_second > 0
    assert metrics.loss < before
    # the schedule was applied for the last epoch trained
    assert engine.optimizer.param_groups[0]["lr"] == pytest.approx(learning_rate(CONFIG.training, engine.epochs_done - 1))


def test_train_from_given_start_ignores_current_weights(engine):
    start = {k: torch.zeros_like(v) for k, v in engine.global_state().items()}
    delta, _ = engine.train_epochs(start, 1)
    end = _snapshot(engine)
    for k in start:
        torch.testing.assert_close(delta[k], end[k])


def test_state_dict_round_trip_restores_weights_optimizer_and_epochs(engine, shard, tmp_path):
    engine.train_epochs(_snapshot(engine), 1)
    saved = engine.state_dict()
    saved = {**saved, "model": {k: v.clone() for k, v in saved["model"].items()}}
    assert saved["epochs_done"] == engine.epochs_done
    # through a real checkpoint file (weights_only load)
    store = CheckpointStore(tmp_path)
    store.save("round-000001", saved)
    restored_state = store.load("round-000001")

    other = LocalEngine(CONFIG, shard, model=build_model(CONFIG.model, seed=99))
    assert not all(torch.equal(other.global_state()[k], saved["model"][k]) for k in saved["model"])
    other.load_state_dict(restored_state)
    assert other.epochs_done == engine.epochs_done
    for k, v in saved["model"].items():
        assert torch.equal(other.global_state()[k], v)
    # identical optimizer state and data position: the next epoch is bit-identical
    start = _snapshot(engine)
    d1, m1 = engine.train_epochs(start, 1)
    d2, m2 = other.train_epochs(start, 1)
    for k in d1:
        assert torch.equal(d1[k], d2[k]), k
    assert m1.loss == m2.loss and other.epochs_done == engine.epochs_done


def test_momentum_state_matters(engine, shard):
    """Sanity check for the round-trip test: without the optimizer state the next epoch differs."""
    fresh = LocalEngine(CONFIG, shard)
    saved = engine.state_dict()
    fresh.load_global(saved["model"])
    fresh.epochs_done = engine.epochs_done
    start = _snapshot(engine)
    d1, _ = engine.train_epochs(start, 1)
    d2, _ = fresh.train_epochs(start, 1)
    assert not all(torch.equal(d1[k], d2[k]) for k in d1)
