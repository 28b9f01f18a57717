"""Measured contributions on a real task: helpful updates score positive, harmful ones are refused."""

from __future__ import annotations

import math

import pytest
import torch

from prime.coordinator.scoring import ContributionScorer
from prime.coordinator.similarity import CopyDetector, is_empty
from prime.core.config import ScoringConfig
from prime.core.errors import UpdateRejected
from prime.tasks import Shard, resolve_task
from prime.trainer.engine import LocalEngine, LocalWork
from prime.core.config import parse_config

TASK = resolve_task("digits", {"hidden": [32]})


def train(start, shard: int):
    engine = LocalEngine(TASK, parse_config({"training": {"batch_size": 32, "learning_rate": 0.1}}).training)
    engine.use_shard(shard, 4)
    return engine.train(start, LocalWork(epochs=1))[0]


@pytest.fixture(scope="module")
def honest():
    """A global model and a real, honestly trained delta from it."""
    start = TASK.build_model(0).state_dict()
    return start, train(start, 0)


@pytest.fixture(scope="module")
def round_of_four(honest):
    start, first = honest
    return start, [first] + [train(start, i) for i in (1, 2, 3)]


def scorer(**config) -> ContributionScorer:
    return ContributionScorer(TASK, TASK.build_model(0), TASK.load_validation(), ScoringConfig(**config))


def test_an_honest_update_passes_the_gate_and_the_batch_is_seeded_by_round(honest):
    start, delta = honest
    s = scorer(batch_samples=128)
    s.begin_round(3, start, share=0.25)
    score = s.gate(delta)  # not refused: a skewed shard's honest update may still cost a little at first
    assert math.isfinite(s.base_loss) and -0.1 * s.base_loss < score
    again = scorer(batch_samples=128)
    again.begin_round(3, start, share=0.25)
    assert again.gate(delta) == score  # a restarted coordinator scores on the same batch
    other = scorer(batch_samples=128)
    other.begin_round(4, start, share=0.25)
    assert other.base_loss != s.base_loss
    assert s.seconds > 0


def test_harmful_and_unscorable_updates_are_refused(honest):
    start, delta = honest
    s = scorer(batch_samples=0, harm_margin=0.25)
    s.begin_round(1, start, share=0.25)
    with pytest.raises(UpdateRejected, match="harmful"):
        s.gate({k: -40 * v for k, v in delta.items()})  # sign flip x10 at a quarter share... x40 whole
    with pytest.raises(UpdateRejected, match="unscorable"):
        s.gate({k: torch.full_like(v, 1e38) for k, v in delta.items()})
    assert abs(s.gate({k: torch.zeros_like(v) for k, v in delta.items()})) < 1e-6  # a free rider scores ~0


def test_marginal_scores_value_what_an_update_adds_to_the_others(round_of_four, honest):
    start, deltas = round_of_four
    s = scorer(batch_samples=0)
    s.begin_round(1, start, share=1 / 6)
    mean = {k: sum(d[k] for d in deltas) / 4 for k in start}  # a "contribution" equal to the others' mean
    torch.manual_seed(0)
    noise = {k: torch.randn_like(v) * 3 * v.std() for k, v in deltas[0].items()}
    updates = [(bytes([i]), 1, d) for i, d in enumerate(deltas)] + [(b"mean", 1, mean), (b"noise", 1, noise)]
    for _, w, d in updates:
        s.add(d, w)
    scores = s.marginal(updates)
    honest_scores = [scores[bytes([i])] for i in range(4)]
    assert scores[b"noise"] < 0 < sum(honest_scores)
    assert abs(scores[b"mean"]) < max(honest_scores) / 4  # adds (almost) nothing the others did not
    start, delta = honest
    single = scorer(batch_samples=0)
    single.begin_round(1, start)
    single.add(delta, 5)
    assert single.marginal([(b"only", 5, delta)])[b"only"] == pytest.approx(single.base_loss - single._loss(
        {k: start[k] + delta[k] for k in start}), rel=1e-5)  # alone: the loss with it minus without


def test_copies_exact_and_near_are_refused_honest_ones_are_not(honest):
    start, delta = honest
    other_engine = LocalEngine(TASK, parse_config({"training": {"batch_size": 32, "learning_rate": 0.1}}).training)
    other_engine.use_shard(1, 4)
    other, _ = other_engine.train(start, LocalWork(epochs=1))
    copies = CopyDetector()
    copies.begin_round(2, start)
    sketch = copies.sketch(delta)
    copies.accept(b"a", "d1", sketch)
    copies.check(b"b", "d2", copies.sketch(other))  # a different shard's honest update passes
    copies.check(b"a", "d1", sketch)  # the same trainer again is the duplicate check's business
    with pytest.raises(UpdateRejected, match="same bytes"):
        copies.check(b"b", "d1", copies.sketch(delta))
    near = {k: 1.01 * v + 1e-6 * torch.randn_like(v) for k, v in delta.items()}
    with pytest.raises(UpdateRejected, match="cosine similarity"):
        copies.check(b"b", "d3", copies.sketch(near))
    assert is_empty({k: torch.zeros_like(v) for k, v in delta.items()}) and not is_empty(delta)


def test_a_bad_coordinator_device_is_refused_before_anything_opens():
    from prime.coordinator.scoring import scoring_device
    from prime.core.errors import CoordinatorError

    assert scoring_device("cpu") == "cpu"
    with pytest.raises(CoordinatorError, match="use cpu, cuda or cuda:N"):
        scoring_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(CoordinatorError, match="no CUDA device"):
            scoring_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on the GPU machine)")
def test_scoring_on_the_gpu_gives_the_cpu_scores(round_of_four):
    """``prime-coordinator --device cuda``: the same gate and leave-one-out scores as on the CPU."""
    start, deltas = round_of_four
    results = []
    for device in ("cpu", "cuda"):
        s = ContributionScorer(TASK, TASK.build_model(0), TASK.load_validation(), ScoringConfig(batch_samples=256),
                               device=device)
        s.begin_round(1, start, share=0.25)
        gates = [s.gate(d) for d in deltas]
        for d in deltas:
            s.add(d, 1.0)
        marginal = s.marginal((bytes([i]), 1.0, d) for i, d in enumerate(deltas))
        results.append((s.base_loss, gates, [marginal[bytes([i])] for i in range(4)]))
    (base_cpu, gates_cpu, loo_cpu), (base_gpu, gates_gpu, loo_gpu) = results
    assert base_gpu == pytest.approx(base_cpu, rel=1e-4)
    assert gates_gpu == pytest.approx(gates_cpu, rel=1e-3, abs=1e-5)
    assert loo_gpu == pytest.approx(loo_cpu, rel=1e-3, abs=1e-5)
