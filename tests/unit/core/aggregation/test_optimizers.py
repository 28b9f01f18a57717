"""Server optimizers: FedAvgM is torch's heavy ball, FedAdam/Yogi/Adagrad Reddi et al.'s."""

from __future__ import annotations

import math

import pytest
import torch

from prime.core.aggregation import Contribution, FedAdagrad, FedAdam, FedAvgM, FedYogi, Strategy
from tests.unit.core.aggregation.helpers import key, run_round, tensors


def mean_delta(seed: int) -> dict[str, torch.Tensor]:
    return tensors(seed, 0.3)


def one_update_round(strategy: Strategy, glob: dict[str, torch.Tensor],
                     delta: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return run_round(strategy, glob, [Contribution(key(1), delta, 4)]).state  # 4·Δ/4 = Δ exactly


@pytest.mark.parametrize("lr, momentum, nesterov", [(1.0, 0.9, False), (0.7, 0.9, True), (0.5, 0.5, False)])
def test_fedavgm_is_torch_sgd_on_the_pseudo_gradient(lr: float, momentum: float, nesterov: bool) -> None:
    glob = tensors(0)
    params = {k: torch.nn.Parameter(v.clone()) for k, v in glob.items()}
    opt = torch.optim.SGD(params.values(), lr=lr, momentum=momentum, nesterov=nesterov, foreach=False)
    strategy = FedAvgM(lr, momentum, nesterov)
    for r in range(4):
        delta = mean_delta(r + 1)
        glob = one_update_round(strategy, glob, delta)
        opt.zero_grad()
        for k, p in params.items():
            p.grad = -delta[k].clone()  # the outer gradient: old − new
        opt.step()
        for k, p in params.items():
            assert torch.equal(glob[k], p.detach()), (r, k)


def test_heavy_ball_by_hand() -> None:
    strategy, x = FedAvgM(server_learning_rate=0.5, server_momentum=0.9), {"x": torch.tensor([1.0])}
    xs = []
    for d in [1.0, 1.0, -2.0]:
        x = one_update_round(strategy, x, {"x": torch.tensor([d])})
        xs.append(x["x"].item())
    # b = 1, 1.9, -0.29: x = 1.5, 2.45, 2.305
    assert xs == pytest.approx([1.5, 2.45, 2.305])


def reddi(kind: str, deltas: list[float], eta: float, b1: float, b2: float, tau: float, x: float) -> list[float]:
    """Reddi et al. 2021, Algorithm 2, written out for one coordinate."""
    m = v = 0.0
    out = []
    for d in deltas:
        m = b1 * m + (1 - b1) * d
        if kind == "adam":
            v = b2 * v + (1 - b2) * d * d
        elif kind == "yogi":
            v = v - (1 - b2) * d * d * math.copysign(1.0, v - d * d) * (v != d * d)
        else:
            v = v + d * d
        x = x + eta * m / (math.sqrt(v) + tau)
        out.append(x)
    return out


@pytest.mark.parametrize("kind, make", [
    ("adam", lambda: FedAdam(eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3)),
    ("yogi", lambda: FedYogi(eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3)),
    ("adagrad", lambda: FedAdagrad(eta=0.1, beta_1=0.0, tau=1e-3)),
    ("adagrad", lambda: FedAdagrad(eta=0.1, beta_1=0.6, tau=1e-3)),
])
def test_adaptive_server_optimizers_match_reddi(kind: str, make) -> None:  # noqa: ANN001
    strategy = make()
    b1 = strategy.optimizer.beta_1
    deltas = [0.5, -0.2, 0.05]  # |Δ| shrinks, so Yogi's v both grows and shrinks
    expected = reddi(kind, deltas, 0.1, b1, 0.99, 1e-3, 2.0)
    x = {"x": torch.tensor([2.0, 2.0], dtype=torch.float64)}  # float64 global: float32 arithmetic inside
    got = []
    for d in deltas:
        x = one_update_round(strategy, x, {"x": torch.tensor([d, d], dtype=torch.float64)})
        got.append(x["x"][0].item())
    assert got == pytest.approx(expected, rel=1e-6)


def test_yogi_and_adam_differ_once_updates_shrink() -> None:
    a, y = FedAdam(eta=0.1), FedYogi(eta=0.1)
    xa = xy = {"x": torch.zeros(1)}
    for d in [1.0, 0.01, 0.01]:
        xa = one_update_round(a, xa, {"x": torch.tensor([d])})
        xy = one_update_round(y, xy, {"x": torch.tensor([d])})
    assert xa["x"].item() != pytest.approx(xy["x"].item(), rel=1e-3)


def test_adam_bias_correction() -> None:
    strategy = FedAdam(eta=0.1, beta_1=0.9, beta_2=0.99, tau=0.0 + 1e-9, bias_correction=True)
    x = one_update_round(strategy, {"x": torch.zeros(1)}, {"x": torch.tensor([4.0])})
    # t = 1: η·√(1−β₂)/(1−β₁) · 0.1·4 / (√0.01·4) = 0.1·0.1/0.1 · 1 = 0.1
    assert x["x"].item() == pytest.approx(0.1, rel=1e-6)


def test_moments_are_server_state() -> None:
    strategy = FedAdam()
    one_update_round(strategy, {"x": torch.zeros(3)}, {"x": torch.ones(3)})
    state = strategy.state_dict()
    assert int(state["optimizer.step"]) == 1
    assert torch.allclose(state["optimizer.m.x"], torch.full((3,), 0.1))
    assert torch.allclose(state["optimizer.v.x"], torch.full((3,), 0.01))
