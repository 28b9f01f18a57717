"""SpotChecker: honest reproducible rounds pass with margin, every fabrication fails, what the
verifier cannot check is inconclusive (never a failure), and sampling is deterministic at its rate.

Honest updates come from a real ``LocalEngine`` in reproducible mode that trained an earlier
round first (so it carries history the round must not depend on): digits with epoch work and
with step work, both with gradient accumulation, and the tiny stdlib-lm with steps."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from prime.coordinator.spotcheck import SpotChecker, Verdict, relative_distance
from prime.core.config import parse_config
from prime.core.errors import ConfigError, TaskError
from prime.tasks import task_of
from prime.tasks.spec import Task
from prime.trainer.distributed import close_process_group
from prime.trainer.engine import LocalEngine, LocalWork, RoundKey

TOLERANCE = 1e-3
DIGITS = {"task": {"name": "digits", "options": {"hidden": [32]}},
          "training": {"batch_size": 16, "gradient_accumulation": 2, "learning_rate": 0.05,
                       "optimizer": {"name": "sgd", "momentum": 0.9}}}
SCENARIOS = {
    "digits-epochs": {**DIGITS, "federated": {"local_epochs": 2}},
    "digits-steps": {**DIGITS, "federated": {"local_steps": 6},
                     "training": {**DIGITS["training"], "scheduler": {"name": "cosine", "warmup_steps": 3, "t_max": 30}}},
    "lm-steps": {"task": {"name": "stdlib-lm", "options": {"preset": "tiny", "seq_len": 64}},
                 "training": {"batch_size": 8, "gradient_accumulation": 2, "learning_rate": 3e-3, "gradient_clipping": 1.0,
                              "optimizer": {"name": "adamw", "weight_decay": 0.01},
                              "scheduler": {"name": "cosine", "warmup_steps": 2, "t_max": 20}},
                 "federated": {"local_steps": 3}},
}
ROUND = 2


def job(data: dict, **training):
    base = {"job_id": "spot-job", "data": {"num_shards": 3}, **data}
    base["training"] = {**data.get("training", {}), "reproducible_rounds": True, **training}
    return parse_config({**base, "verification": {"spot_check_rate": 0.5, "tolerance": TOLERANCE}})


@pytest.fixture(scope="module", autouse=True)
def _process_group():
    yield
    close_process_group()


@dataclasses.dataclass
class Round:
    """Round 2 of a job as the trainer on shard 0 and the one on shard 1 trained it."""

    config: object
    task: Task
    start: dict  # the round's global model
    honest: dict  # shard 0's honest delta
    previous: dict  # shard 0's delta of round 1 (a stale update)
    neighbour: dict  # shard 1's honest delta of this round (a copied update)
    wrong_shard: dict  # shard 0's round trained on shard 2's data


def _trained_round(data: dict) -> Round:
    config = job(data)
    task = task_of(config)
    work = LocalWork.of(config.federated)
    trainer = LocalEngine(task, config.training)
    trainer.use_shard(0, 3)
    genesis = trainer.global_state()
    previous, _ = trainer.train(genesis, work, round_key=RoundKey(config.job_id, 1, 0))
    start = {k: genesis[k] + 0.5 * previous[k] for k in genesis}  # what an aggregate might be
    honest, _ = trainer.train(start, work, round_key=RoundKey(config.job_id, ROUND, 0))
    neighbour_engine = LocalEngine(task, config.training)
    neighbour_engine.use_shard(1, 3)
    neighbour, _ = neighbour_engine.train(start, work, round_key=RoundKey(config.job_id, ROUND, 1))
    trainer.use_shard(2, 3)
    wrong_shard, _ = trainer.train(start, work, round_key=RoundKey(config.job_id, ROUND, 0))
    return Round(config, task, start, honest, previous, neighbour, wrong_shard)


@pytest.fixture(scope="module", params=list(SCENARIOS))
def trained(request) -> Round:
    return _trained_round(SCENARIOS[request.param])


@pytest.fixture(scope="module")
def checkers():
    made: dict[str, SpotChecker] = {}
    yield made
    for checker in made.values():
        checker.close()


def checker_for(trained: Round, checkers: dict) -> SpotChecker:
    key = trained.config.model_dump_json()  # not id(trained): a freed scenario's id comes back for the next
    if key not in checkers:
        checkers[key] = SpotChecker(trained.config, trained.task)
    return checkers[key]


def verdict(trained: Round, checkers: dict, delta: dict) -> Verdict:
    return checker_for(trained, checkers).check(trained.start, delta, 0, 3, ROUND)


def test_honest_update_passes_with_margin(trained, checkers):
    result = verdict(trained, checkers, trained.honest)
    assert result.passed and not result.failed and result.inconclusive is None and result.outcome == "passed"
    assert result.distance <= TOLERANCE / 1000, result  # bit-identical on one machine: 0
    assert result.seconds > 0


FABRICATIONS = {
    "noise": lambda r: {k: torch.randn_like(v) * (float(v.std()) if v.numel() > 1 else 1e-3) for k, v in r.honest.items()},
    "zeros": lambda r: {k: torch.zeros_like(v) for k, v in r.honest.items()},
    "copy of another trainer's": lambda r: r.neighbour,
    "stale (last round's)": lambda r: r.previous,
    "honest on another shard": lambda r: r.wrong_shard,
    "sign-flipped": lambda r: {k: -v for k, v in r.honest.items()},
    "scaled by 1.01": lambda r: {k: 1.01 * v for k, v in r.honest.items()},
}


@pytest.mark.parametrize("name", list(FABRICATIONS))
def test_fabricated_update_fails(trained, checkers, name):
    result = verdict(trained, checkers, FABRICATIONS[name](trained))
    assert result.failed and result.inconclusive is None and result.outcome == "failed", result
    assert result.distance >= (5e-3 if name == "scaled by 1.01" else 0.3), result


@pytest.fixture(scope="module")
def digits_round() -> Round:
    return _trained_round(SCENARIOS["digits-steps"])


def test_an_update_that_does_not_fit_fails_with_infinite_distance(digits_round, checkers):
    honest = digits_round.honest
    first = next(iter(honest))
    for bad in ({k: v for k, v in honest.items() if k != first},
                {**honest, first: honest[first].flatten()},
                {**honest, first: torch.full_like(honest[first], math.nan)}):
        result = verdict(digits_round, checkers, bad)
        assert result.failed and result.distance == math.inf


# -- inconclusive: the verifier's limits, never the trainer's fault -------------------------------


def _inconclusive(checker: SpotChecker, r: Round, start=None) -> Verdict:
    result = checker.check(r.start if start is None else start, r.honest, 0, 3, ROUND)
    assert not result.passed and not result.failed and math.isnan(result.distance), result
    assert result.outcome == "inconclusive"
    return result


def test_bf16_is_inconclusive(digits_round):
    config = job(SCENARIOS["digits-steps"], precision="bf16")
    result = _inconclusive(SpotChecker(config, digits_round.task), digits_round)
    assert "bf16" in result.inconclusive and "device" in result.inconclusive


def test_private_data_is_inconclusive(digits_round):
    private = Task(dataclasses.replace(digits_round.task.spec, public_data=False), digits_round.task.options)
    result = _inconclusive(SpotChecker(digits_round.config, private), digits_round)
    assert "public_data" in result.inconclusive


def test_unreadable_shard_is_inconclusive(digits_round):
    def missing(options, shard):
        raise TaskError(f"cannot read shard {shard.index}: /data/shard-{shard.index}.bin: no such file")

    absent = Task(dataclasses.replace(digits_round.task.spec, load_shard=missing), digits_round.task.options)
    result = _inconclusive(SpotChecker(digits_round.config, absent), digits_round)
    assert "cannot load shard 0 of 3" in result.inconclusive and "no such file" in result.inconclusive


def test_verifier_engine_failure_is_inconclusive_and_the_checker_recovers(digits_round):
    checker = SpotChecker(digits_round.config, digits_round.task)
    wrong_model = {k: torch.zeros(2, 2) for k in digits_round.start}
    result = _inconclusive(checker, digits_round, start=wrong_model)
    assert "verifier's engine failed" in result.inconclusive
    assert checker.check(digits_round.start, digits_round.honest, 0, 3, ROUND).passed  # a fresh engine next time
    checker.close()


def test_job_without_reproducible_rounds_is_inconclusive(digits_round):
    config = job(SCENARIOS["digits-steps"]).model_copy(
        update={"training": job(SCENARIOS["digits-steps"]).training.model_copy(update={"reproducible_rounds": False})})
    result = _inconclusive(SpotChecker(config, digits_round.task), digits_round)
    assert "reproducible_rounds" in result.inconclusive


# -- sampling ------------------------------------------------------------------------------------

CONFIG = job(SCENARIOS["digits-steps"])
TASK = task_of(CONFIG)
KEYS = [bytes([i % 256, i // 256]) * 16 for i in range(20_000)]


def test_sampling_is_deterministic_and_secret_dependent():
    a, b = SpotChecker(CONFIG, TASK, secret=b"s1"), SpotChecker(CONFIG, TASK, secret=b"s1")
    other = SpotChecker(CONFIG, TASK, secret=b"s2")
    picks = [a.sampled(3, k) for k in KEYS[:500]]
    assert picks == [b.sampled(3, k) for k in KEYS[:500]]  # a restarted coordinator samples the same
    assert picks != [other.sampled(3, k) for k in KEYS[:500]]  # without the secret, unpredictable
    assert picks != [a.sampled(4, k) for k in KEYS[:500]]  # and fresh every round
    assert not any(SpotChecker(CONFIG, TASK, rate=0.0).sampled(1, k) for k in KEYS[:100])
    assert all(SpotChecker(CONFIG, TASK, rate=1.0).sampled(1, k) for k in KEYS[:100])
    with pytest.raises(ConfigError, match="rate"):
        SpotChecker(CONFIG, TASK, rate=1.5)


@pytest.mark.parametrize("rate", [0.05, 0.2, 0.5])
def test_sampled_fraction_matches_the_rate(rate):
    checker = SpotChecker(CONFIG, TASK, secret=b"k", rate=rate)
    fraction = sum(checker.sampled(7, k) for k in KEYS) / len(KEYS)
    assert abs(fraction - rate) < 4 * math.sqrt(rate * (1 - rate) / len(KEYS))


@pytest.mark.parametrize("rate, rounds", [(0.1, 10), (0.05, 30)])
def test_detection_probability_of_a_fabricating_trainer(rate, rounds):
    """A trainer that fabricates every round is caught with probability 1 − (1 − p)^R."""
    checker = SpotChecker(CONFIG, TASK, secret=b"k", rate=rate)
    trainers = KEYS[:1000]
    caught = sum(any(checker.sampled(r, k) for r in range(1, rounds + 1)) for k in trainers) / len(trainers)
    expected = 1 - (1 - rate) ** rounds
    assert abs(caught - expected) < 4 * math.sqrt(expected * (1 - expected) / len(trainers))


def test_relative_distance():
    a = {"w": torch.tensor([3.0, 4.0])}
    assert relative_distance(a, a) == 0.0
    assert relative_distance(a, {"w": torch.zeros(2)}) == pytest.approx(1.0)
    assert relative_distance(a, {"w": -a["w"]}) == pytest.approx(2.0)
    assert relative_distance({"w": torch.zeros(2)}, {"w": torch.zeros(2)}) == 0.0
    assert relative_distance(a, {"v": a["w"]}) == math.inf
