"""FedAvg: sample-weighted mean of deltas added to the global model; scores sum to 1."""

from __future__ import annotations

import pytest
import torch

from prime.core.aggregation import Contribution, FedAvg, RoundResult, Strategy, build_strategy


def state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(4, 3, generator=g), "b": torch.randn(3, generator=g)}


def test_fedavg_equals_hand_computed_weighted_mean():
    glob = state(0)
    deltas = [state(1), state(2), state(3)]
    samples = [10, 30, 60]
    keys = [b"a" * 32, b"b" * 32, b"c" * 32]
    strat = FedAvg()
    strat.begin(glob)
    for key, delta, n in zip(keys, deltas, samples):
        strat.add(Contribution(key, delta, n))
    new, scores = strat.finish()
    for name in glob:
        expected = glob[name].double() + sum(n * d[name].double() for d, n in zip(deltas, samples)) / sum(samples)
        torch.testing.assert_close(new[name].double(), expected, rtol=1e-6, atol=1e-6)
        assert new[name].dtype == glob[name].dtype
    assert scores == {keys[0]: 0.1, keys[1]: 0.3, keys[2]: 0.6}
    assert sum(scores.values()) == pytest.approx(1.0)


def test_fedavg_single_contributor_applies_its_delta():
    glob, delta = state(0), state(1)
    strat = FedAvg()
    strat.begin(glob)
    strat.add(Contribution(b"k", delta, 7))
    new, scores = strat.finish()
    for name in glob:
        torch.testing.assert_close(new[name], glob[name] + delta[name])
    assert scores == {b"k": 1.0}


def test_order_does_not_matter():
    glob = state(0)
    contribs = [Contribution(bytes([i]) * 32, state(i + 1), i + 1) for i in range(4)]
    results = []
    for order in (contribs, contribs[::-1]):
        strat = FedAvg()
        strat.begin(glob)
        for c in order:
            strat.add(c)
        results.append(strat.finish())
    for name in glob:
        torch.testing.assert_close(results[0].state[name], results[1].state[name])
    assert results[0].scores == results[1].scores


def test_scores_sum_to_one_for_many_contributors():
    glob = state(0)
    strat = FedAvg()
    strat.begin(glob)
    for i in range(13):
        strat.add(Contribution(bytes([i]) * 32, state(i), 1 + 7 * i))
    _, scores = strat.finish()
    assert len(scores) == 13
    assert sum(scores.values()) == pytest.approx(1.0, abs=1e-12)
    assert all(s > 0 for s in scores.values())


def test_global_not_mutated():
    glob = state(0)
    snapshot = {k: v.clone() for k, v in glob.items()}
    strat = FedAvg()
    strat.begin(glob)
    strat.add(Contribution(b"a", state(1), 5))
    strat.finish()
    for k in glob:
        assert torch.equal(glob[k], snapshot[k])


def test_duplicate_contributor_refused_and_not_counted():
    glob = state(0)
    strat = FedAvg()
    strat.begin(glob)
    strat.add(Contribution(b"a", state(1), 5))
    with pytest.raises(ValueError, match="already"):
        strat.add(Contribution(b"a", state(2), 100))
    new, scores = strat.finish()
    assert scores == {b"a": 1.0}
    for k in glob:
        torch.testing.assert_close(new[k], glob[k] + state(1)[k])


def test_no_contributions_keeps_global():
    glob = state(0)
    strat = FedAvg()
    strat.begin(glob)
    new, scores = strat.finish()
    assert scores == {}
    for k in glob:
        assert torch.equal(new[k], glob[k])


def test_begin_resets_between_rounds():
    strat = FedAvg()
    strat.begin(state(0))
    strat.add(Contribution(b"a", state(1), 5))
    strat.finish()
    glob = state(5)
    strat.begin(glob)
    strat.add(Contribution(b"a", state(6), 1))  # same contributor, new round: allowed
    new, scores = strat.finish()
    assert scores == {b"a": 1.0}
    for k in glob:
        torch.testing.assert_close(new[k], glob[k] + state(6)[k])


def test_add_or_finish_before_begin():
    with pytest.raises(RuntimeError):
        FedAvg().add(Contribution(b"a", state(1), 1))
    with pytest.raises(RuntimeError):
        FedAvg().finish()


def test_build_strategy():
    strat = build_strategy({"name": "fedavg"})
    assert isinstance(strat, FedAvg) and isinstance(strat, Strategy)
    assert build_strategy({"name": "fedavg"}) is not strat
    with pytest.raises(ValueError):
        build_strategy({"name": "fedavg", "unknown": 1})


def test_result_fields_and_transitional_unpacking():
    strat = FedAvg()
    strat.begin(state(0))
    strat.add(Contribution(b"a", state(1), 1))
    strat.add(Contribution(b"z", state(2), 0))  # weight 0: no share, dropped
    result = strat.finish()
    assert isinstance(result, RoundResult)
    assert result.scores == {b"a": 1.0, b"z": 0.0} and result.dropped == {b"z"}
    new, scores = result  # the old two-value form still unpacks
    assert new is result.state and scores is result.scores


def test_zero_total_weight_keeps_global_and_state():
    glob = state(0)
    strat = FedAvg()
    strat.begin(glob)
    strat.add(Contribution(b"a", state(1), 0))
    result = strat.finish()
    assert all(torch.equal(result.state[k], glob[k]) for k in glob)
    assert result.scores == {b"a": 0.0} and result.dropped == {b"a"}
    assert int(strat.state_dict()["optimizer.step"]) == 0
