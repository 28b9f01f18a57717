"""Robust aggregators: literal small cases, and the effect of outliers stays bounded."""

from __future__ import annotations

import pytest
import torch

from prime.core.aggregation import (
    Bulyan,
    CenteredClip,
    Contribution,
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
    Strategy,
)
from tests.unit.core.aggregation.helpers import key, run_round


def scalars(values: list[float], samples: list[int] | None = None) -> list[Contribution]:
    samples = samples or [1] * len(values)
    return [Contribution(key(i), {"x": torch.tensor([v])}, n) for i, (v, n) in enumerate(zip(values, samples))]


ZERO = {"x": torch.zeros(1)}


def test_median_literal() -> None:
    r = run_round(FedMedian(), ZERO, scalars([5.0, 1.0, 100.0]))
    assert r.state["x"].item() == 5.0
    assert r.scores == {key(0): 1.0, key(1): 0.0, key(2): 0.0} and r.dropped == {key(1), key(2)}
    r = run_round(FedMedian(), ZERO, scalars([1.0, 2.0, 3.0, 100.0], [1, 50, 50, 1]))  # weights ignored
    assert r.state["x"].item() == 2.5
    assert r.scores == {key(0): 0.0, key(1): 0.5, key(2): 0.5, key(3): 0.0}


def test_trimmed_mean_literal() -> None:
    r = run_round(FedTrimmedAvg(beta=0.2), {"x": torch.tensor([10.0])}, scalars([1.0, 2.0, 3.0, 4.0, 100.0]))
    assert r.state["x"].item() == 10.0 + 3.0  # trims 1 and 100, mean of 2, 3, 4
    assert r.scores == pytest.approx({key(0): 0.0, key(1): 1 / 3, key(2): 1 / 3, key(3): 1 / 3, key(4): 0.0})
    r = run_round(FedTrimmedAvg(beta=0.0), ZERO, scalars([1.0, 2.0, 6.0]))
    assert r.state["x"].item() == 3.0  # β = 0: the plain (unweighted) mean


def test_trimmed_mean_scores_count_kept_coordinates() -> None:
    # two coordinates: update 0 is kept in the first only
    contribs = [Contribution(key(i), {"x": torch.tensor(v)}, 1)
                for i, v in enumerate([[0.0, 2.5], [1.0, 1.0], [2.0, 2.0], [3.0, 9.0], [9.0, 0.5]])]
    r = run_round(FedTrimmedAvg(beta=0.2), {"x": torch.zeros(2)}, contribs)
    assert r.state["x"].tolist() == pytest.approx([2.0, (1.0 + 2.0 + 2.5) / 3])
    assert r.scores == pytest.approx({key(0): 1 / 6, key(1): 2 / 6, key(2): 2 / 6, key(3): 1 / 6, key(4): 0.0})
    assert r.dropped == {key(4)}


def test_krum_literal() -> None:
    # n = 5, f = 1: each score sums the 2 nearest squared distances
    r = run_round(Krum(num_malicious=1), ZERO, scalars([0.0, 1.0, 2.0, 3.0, 50.0]))
    # scores: 0→1+4=5, 1→1+1=2, 2→1+1=2, 3→1+4=5, 50→47²+48²; tie 1 vs 2 → lower key
    assert r.state["x"].item() == 1.0
    assert r.scores[key(1)] == 1.0 and r.dropped == {key(0), key(2), key(3), key(4)}
    r = run_round(MultiKrum(num_malicious=1, num_selected=3), ZERO, scalars([0.0, 1.0, 2.0, 3.0, 50.0],
                                                                           [1, 1, 2, 1, 9]))
    # keeps 1, 2 and then 0 (score 5, ties with 3 → lower key), weighted 1:2:1
    assert r.state["x"].item() == pytest.approx((0.0 + 1.0 + 2 * 2.0) / 4)
    assert r.scores == {key(0): 0.25, key(1): 0.25, key(2): 0.5, key(3): 0.0, key(4): 0.0}


def test_bulyan_literal() -> None:
    # n = 7, f = 1: θ = 5 picked by repeated Krum, β = 3 nearest the median averaged
    values = [0.0, 1.0, 2.0, 3.0, 4.0, 40.0, -40.0]
    r = run_round(Bulyan(num_malicious=1), ZERO, scalars(values))
    assert r.state["x"].item() == 2.0  # picks 0..4, median 2, nearest three 1, 2, 3
    assert r.dropped == {key(0), key(4), key(5), key(6)}
    assert r.scores == pytest.approx({key(0): 0.0, key(1): 1 / 3, key(2): 1 / 3, key(3): 1 / 3,
                                      key(4): 0.0, key(5): 0.0, key(6): 0.0})


def test_centeredclip_literal() -> None:
    # v₀ = 0, τ = 1: clip weights min(1, 1/|x|) → v₁ = (1/3)·(0.5 + 1 − 1) = 1/6
    r = run_round(CenteredClip(tau=1.0, iterations=1), ZERO, scalars([0.5, 4.0, -10.0]))
    assert r.state["x"].item() == pytest.approx(1 / 6)
    c = [1.0, 0.25, 0.1]
    assert r.scores == pytest.approx({key(i): ci / sum(c) for i, ci in enumerate(c)})


def test_centeredclip_previous_init_carries_over() -> None:
    strategy = CenteredClip(tau=1.0, iterations=1)
    first = run_round(strategy, ZERO, scalars([0.5, 4.0, -10.0]))
    second = run_round(strategy, ZERO, scalars([0.5, 4.0, -10.0]))  # starts from 1/6 now
    v0 = 1 / 6
    expected = v0 + sum(min(1.0, 1.0 / abs(x - v0)) * (x - v0) for x in [0.5, 4.0, -10.0]) / 3
    assert first.state["x"].item() != second.state["x"].item()
    assert second.state["x"].item() == pytest.approx(expected)


# -- outliers ----------------------------------------------------------------------------

P = 200


def honest(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(P, generator=g) * 0.1
    return [mu + 0.01 * torch.randn(P, generator=g) for _ in range(n)]


def attacked(n_honest: int, attackers: int, scale: float = -10.0) -> tuple[list[Contribution], torch.Tensor]:
    xs = honest(n_honest)
    mean = torch.stack(xs).mean(0)
    bad = [scale * mean for _ in range(attackers)]
    contribs = [Contribution(key(i), {"x": x}, 10) for i, x in enumerate(xs + bad)]
    return contribs, mean


def distance_to_honest(strategy: Strategy, contribs: list[Contribution], mean: torch.Tensor) -> float:
    result = run_round(strategy, {"x": torch.zeros(P)}, contribs)
    return float((result.state["x"] - mean).norm() / mean.norm())


@pytest.mark.parametrize("make, n_honest", [
    (FedMedian, 4),
    (lambda: FedTrimmedAvg(beta=0.2), 4),
    (lambda: Bulyan(num_malicious=1), 6),
    (lambda: CenteredClip(tau=0.5, iterations=20), 4),
    (lambda: CenteredClip(tau=0.05, iterations=2, init="median"), 4),
    (lambda: Krum(num_malicious=1), 4),
    (lambda: MultiKrum(num_malicious=1, num_selected=3), 4),
], ids=["median", "trimmed", "bulyan", "centeredclip", "centeredclip-median", "krum", "multikrum"])
def test_one_huge_sign_flipped_outlier_is_bounded(make, n_honest) -> None:  # noqa: ANN001
    contribs, mean = attacked(n_honest, 1)
    robust = distance_to_honest(make(), contribs, mean)
    plain = distance_to_honest(FedAvg(), contribs, mean)
    assert plain > 1.5  # the mean is dragged far past zero
    assert robust < 0.15, robust


def test_krum_picks_the_honest_cluster() -> None:
    contribs, _ = attacked(5, 2, scale=3.0)  # n = 7, f = 2: n > 2f + 2
    bad = {key(5), key(6)}
    r = run_round(Krum(num_malicious=2), {"x": torch.zeros(P)}, contribs)
    assert bad <= r.dropped and len(r.dropped) == 6
    r = run_round(MultiKrum(num_malicious=2, num_selected=5), {"x": torch.zeros(P)}, contribs)
    assert r.dropped == bad
    assert all(r.scores[key(i)] == pytest.approx(0.2) for i in range(5))


def test_bulyan_drops_the_attackers() -> None:
    xs = honest(9)  # n = 11 ≥ 4f + 3 for f = 2
    mean = torch.stack(xs).mean(0)
    g = torch.Generator().manual_seed(5)
    bad = [-5 * mean + torch.randn(P, generator=g) for _ in range(2)]
    contribs = [Contribution(key(i), {"x": x}, 10) for i, x in enumerate(xs + bad)]
    r = run_round(Bulyan(num_malicious=2), {"x": torch.zeros(P)}, contribs)
    assert {key(9), key(10)} <= r.dropped and len(r.dropped) == 4  # θ = 7 picked
    assert float((r.state["x"] - mean).norm() / mean.norm()) < 0.1


@pytest.mark.parametrize("make", [FedMedian, lambda: FedTrimmedAvg(0.2), lambda: Bulyan(1), lambda: Krum(1),
                                  lambda: CenteredClip(0.5, 2, "median")],
                         ids=["median", "trimmed", "bulyan", "krum", "centeredclip"])
def test_chunking_does_not_change_results(make, monkeypatch) -> None:  # noqa: ANN001
    from prime.core.aggregation import _util

    contribs, _ = attacked(6, 1)
    contribs = [Contribution(c.contributor, {"x": c.delta["x"][:150].reshape(10, 15),
                                             "y": c.delta["x"][150:]}, 1) for c in contribs]
    glob = {"x": torch.zeros(10, 15), "y": torch.zeros(50)}
    whole = run_round(make(), glob, contribs)
    monkeypatch.setattr(_util, "CHUNK", 7)
    chunked = run_round(make(), glob, contribs)
    assert all(torch.equal(whole.state[k], chunked.state[k]) for k in glob)
    assert chunked.scores == pytest.approx(whole.scores, abs=1e-12)
