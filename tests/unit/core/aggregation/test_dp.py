"""Central DP wrappers: clipping, calibrated Gaussian noise, adaptive clip norm."""

from __future__ import annotations

import math

import pytest
import torch

from prime.core.aggregation import (
    Contribution,
    DPAdaptiveClipping,
    DPFixedClipping,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
)
from tests.unit.core.aggregation.helpers import key, run_round


def vec(values: list[float]) -> dict[str, torch.Tensor]:
    return {"x": torch.tensor(values)}


def test_fixed_clipping_without_noise_is_the_clipped_uniform_mean() -> None:
    contribs = [Contribution(key(0), vec([3.0, 4.0]), 1),     # norm 5 → scaled to norm 1
                Contribution(key(1), vec([0.3, 0.4]), 100),   # norm 0.5 → kept; weight ignored
                Contribution(key(2), vec([0.0, -10.0]), 5)]   # norm 10 → (0, −1)
    strategy = DPFixedClipping(FedAvg(), clip_norm=1.0, noise_multiplier=0.0, seed=1)
    r = run_round(strategy, vec([1.0, 1.0]), contribs)
    expected = torch.tensor([1.0, 1.0]) + (torch.tensor([0.6, 0.8]) + torch.tensor([0.3, 0.4])
                                           + torch.tensor([0.0, -1.0])) / 3
    torch.testing.assert_close(r.state["x"], expected)
    assert r.scores == pytest.approx({key(0): 1 / 3, key(1): 1 / 3, key(2): 1 / 3})


def test_one_update_moves_the_model_at_most_clip_norm_over_n() -> None:
    contribs = [Contribution(key(i), {"x": torch.zeros(50)}, 1) for i in range(4)]
    contribs.append(Contribution(key(9), {"x": torch.full((50,), 1e6)}, 1))
    r = run_round(DPFixedClipping(FedAvg(), clip_norm=2.0, noise_multiplier=0.0, seed=1), {"x": torch.zeros(50)},
                  contribs)
    assert float(r.state["x"].norm()) == pytest.approx(2.0 / 5, rel=1e-6)


def noise_round(strategy, n: int = 4, size: int = 200_000) -> torch.Tensor:  # noqa: ANN001
    contribs = [Contribution(key(i), {"x": torch.zeros(size)}, 1) for i in range(n)]
    return run_round(strategy, {"x": torch.zeros(size)}, contribs).state["x"]


def test_fixed_noise_has_std_z_c_over_n() -> None:
    z, c, n = 0.5, 2.0, 4
    noise = noise_round(DPFixedClipping(FedAvg(), clip_norm=c, noise_multiplier=z, seed=7), n)
    sigma = z * c / n
    assert float(noise.std()) == pytest.approx(sigma, rel=0.01)
    assert abs(float(noise.mean())) < 4 * sigma / math.sqrt(noise.numel())


def test_noise_is_seeded_by_seed_and_round() -> None:
    a = DPFixedClipping(FedAvg(), clip_norm=1.0, noise_multiplier=1.0, seed=3)
    b = DPFixedClipping(FedAvg(), clip_norm=1.0, noise_multiplier=1.0, seed=3)
    c = DPFixedClipping(FedAvg(), clip_norm=1.0, noise_multiplier=1.0, seed=4)
    first_a, first_b, first_c = (noise_round(s, size=100) for s in (a, b, c))
    assert torch.equal(first_a, first_b) and not torch.equal(first_a, first_c)
    assert not torch.equal(noise_round(a, size=100), first_a)  # round 2 draws fresh noise
    assert int(a.state_dict()["aggregator.round"]) == 2


def test_the_noise_seed_is_never_in_the_server_state() -> None:
    """The state is mirrored through the blob service: a seed in it would let anyone subtract the noise."""
    a, b = (DPFixedClipping(FedAvg(), clip_norm=1.0, noise_multiplier=1.0) for _ in range(2))
    assert not any("seed" in key for key in a.state_dict())
    assert a.aggregator.seed != b.aggregator.seed  # unseeded: random per instance
    b.load_state_dict(a.state_dict())
    assert not torch.equal(noise_round(a, size=100), noise_round(b, size=100))
    c, d = (DPFixedClipping(FedAvg(), clip_norm=1.0, noise_multiplier=1.0, seed=7) for _ in range(2))
    d.load_state_dict(c.state_dict())
    assert torch.equal(noise_round(c, size=100), noise_round(d, size=100))  # the same seed: the same noise


def test_noise_goes_into_the_pseudo_gradient_before_the_server_optimizer() -> None:
    # FedAdam's first step is ≈ η·sign(Δ̄) per coordinate whatever the noise's size
    noisy = noise_round(DPFixedClipping(FedAdam(eta=0.1, tau=1e-9), clip_norm=1.0, noise_multiplier=1.0, seed=5),
                        size=1000)
    assert torch.allclose(noisy.abs(), torch.full((1000,), 0.1), rtol=1e-3)


def test_wraps_in_memory_strategies_and_keeps_proximal_mu() -> None:
    s = DPFixedClipping(FedMedian(max_updates=3), clip_norm=1.0, noise_multiplier=0.0, seed=0)
    assert not s.streaming and s.max_updates == 3 and s.label == "dp-fixed(fedmedian)"
    r = run_round(s, vec([0.0]), [Contribution(key(i), vec([v]), 1) for i, v in enumerate([0.5, 9.0, -0.2])])
    assert r.state["x"].item() == pytest.approx(0.5)
    assert DPFixedClipping(FedProx(0.3), clip_norm=1.0, noise_multiplier=0.0).proximal_mu == 0.3


def norms_round(strategy, norms: list[float]) -> None:  # noqa: ANN001
    contribs = [Contribution(key(i), vec([n, 0.0]), 1) for i, n in enumerate(norms)]
    run_round(strategy, vec([0.0, 0.0]), contribs)


def clip_of(strategy) -> float:  # noqa: ANN001
    return float(strategy.state_dict()["aggregator.clip_norm"])


def test_adaptive_clip_norm_step_is_andrew_et_al() -> None:
    s = DPAdaptiveClipping(FedAvg(), clip_norm=2.0, noise_multiplier=0.0, target_quantile=0.5,
                           clip_learning_rate=0.2, seed=0)
    norms_round(s, [1.0, 1.5, 3.0, 4.0, 5.0])  # 2 of 5 at or below C = 2
    assert clip_of(s) == pytest.approx(2.0 * math.exp(-0.2 * (2 / 5 - 0.5)))


@pytest.mark.parametrize("quantile, expected", [(0.5, 10.5), (0.8, 16.5)])
def test_adaptive_clip_norm_tracks_the_target_quantile(quantile: float, expected: float) -> None:
    s = DPAdaptiveClipping(FedAvg(), clip_norm=0.5, noise_multiplier=0.0, target_quantile=quantile,
                           clip_learning_rate=0.2, seed=0)
    norms = [float(i) for i in range(1, 21)]
    history = []
    for _ in range(150):
        norms_round(s, norms)
        history.append(clip_of(s))
    assert history[0] > 0.5  # moved up from a clip norm below every update
    assert sum(history[-40:]) / 40 == pytest.approx(expected, rel=0.12)


def test_adaptive_noise_uses_the_adjusted_multiplier() -> None:
    z, sigma_b, c, n = 0.5, 1.0, 2.0, 4
    s = DPAdaptiveClipping(FedAvg(), clip_norm=c, noise_multiplier=z, clipped_count_stddev=sigma_b, seed=9)
    noise = noise_round(s, n)
    z_delta = (z ** -2 - (2 * sigma_b) ** -2) ** -0.5
    assert float(noise.std()) == pytest.approx(z_delta * c / n, rel=0.01)


def test_adaptive_requirements() -> None:
    with pytest.raises(ValueError, match="clipped_count_stddev"):
        DPAdaptiveClipping(FedAvg(), clip_norm=1.0, noise_multiplier=1.0, clipped_count_stddev=0.5)
    s = DPAdaptiveClipping(FedAvg(), clip_norm=1.0, noise_multiplier=1.0)  # σ_b = n/20: needs n > 10
    assert s.requirement().minimum == 11
    s.begin(vec([0.0]))
    for i in range(10):
        s.add(Contribution(key(i), vec([1.0]), 1))
    with pytest.raises(ValueError, match="needs"):
        s.finish()
