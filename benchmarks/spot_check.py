"""Spot checks: what one costs against the trainer's own round, and how often sampling catches a fabricator.

Cost: a real ``LocalEngine`` in reproducible mode trains one round on shard 0 (the trainer's
work, timed), then a ``SpotChecker`` recomputes it (timed) and compares; the same checker
measures fabricated updates of that round (Gaussian noise of the honest norm, zeros, the sign
flip, honest work on another shard). Printed: seconds of the trainer's round and of the check,
their ratio, and each update's relative distance against ``verification.tolerance``.

Detection: a trainer that fabricates every round is caught in the first round whose update is
sampled. Over many keys this measures the share caught within R rounds at rate p with the
checker's own sampling (SHA-256 of secret, job, round, key), next to 1 − (1 − p)^R.

    python benchmarks/spot_check.py [--tasks digits,stdlib-lm] [--keys 4000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prime.coordinator.spotcheck import SpotChecker  # noqa: E402
from prime.core.config import parse_config  # noqa: E402
from prime.tasks import task_of  # noqa: E402
from prime.trainer.engine import LocalEngine, LocalWork, RoundKey  # noqa: E402

TOLERANCE = 1e-3
JOBS = {
    "digits": {"task": {"name": "digits"}, "federated": {"local_epochs": 2}},
    "stdlib-lm": {"task": {"name": "stdlib-lm", "options": {"preset": "tiny"}},
                  "training": {"batch_size": 8, "learning_rate": 3e-3, "optimizer": {"name": "adamw"}},
                  "federated": {"local_steps": 10}},
}
RATES, HORIZONS = (0.05, 0.1, 0.25, 0.5), (1, 5, 10, 20)


def job(task: str, rate: float = 1.0):
    data = JOBS[task]
    return parse_config({"job_id": "spot-bench", "data": {"num_shards": 4}, **data,
                         "training": {**data.get("training", {}), "reproducible_rounds": True},
                         "verification": {"spot_check_rate": rate, "tolerance": TOLERANCE}})


def cost(task_name: str) -> None:
    config = job(task_name)
    task = task_of(config)
    work = LocalWork.of(config.federated)
    trainer = LocalEngine(task, config.training)
    trainer.use_shard(0, 4)
    start = trainer.global_state()
    began = time.perf_counter()
    honest, _ = trainer.train(start, work, round_key=RoundKey(config.job_id, 1, 0))
    train_s = time.perf_counter() - began
    trainer.use_shard(1, 4)
    other_shard, _ = trainer.train(start, work, round_key=RoundKey(config.job_id, 1, 0))
    trainer.close()
    norm = torch.sqrt(sum(d.pow(2).sum() for d in honest.values()))
    noise = {k: torch.randn_like(d) for k, d in honest.items()}
    noise_norm = torch.sqrt(sum(n.pow(2).sum() for n in noise.values()))
    updates = {
        "honest": honest,
        "gaussian noise": {k: n * (norm / noise_norm) for k, n in noise.items()},
        "zeros": {k: torch.zeros_like(d) for k, d in honest.items()},
        "sign flip": {k: -d for k, d in honest.items()},
        "other shard's work": other_shard,
    }
    checker = SpotChecker(config, task)
    checker.check(start, honest, 0, 4, 1)  # builds the verifier's engine (once per coordinator)
    print(f"\n{task_name}: trainer round {train_s:.3f}s ({work}), tolerance {TOLERANCE:g}")
    print(f"  {'update':<20} {'distance':>10} {'verdict':>8} {'check s':>8} {'check/round':>11}")
    for name, delta in updates.items():
        verdict = checker.check(start, delta, 0, 4, 1)
        print(f"  {name:<20} {verdict.distance:>10.2e} {verdict.outcome:>8} {verdict.seconds:>8.3f} "
              f"{verdict.seconds / train_s:>10.2f}x")
    checker.close()


def detection(keys: int) -> None:
    print(f"\ndetection of a trainer that fabricates every round ({keys} keys, the checker's own sampling)")
    print(f"  {'p':>5} " + " ".join(f"{f'R={r} measured':>14} {'1-(1-p)^R':>10}" for r in HORIZONS))
    task = task_of(job("digits"))
    signers = [os.urandom(32) for _ in range(keys)]
    for rate in RATES:
        checker = SpotChecker(job("digits", rate), task, secret=b"benchmark secret")
        first = [next((r for r in range(1, max(HORIZONS) + 1) if checker.sampled(r, s)), None) for s in signers]
        cells = []
        for horizon in HORIZONS:
            caught = sum(1 for r in first if r is not None and r <= horizon) / keys
            cells.append(f"{caught:>14.3f} {1 - (1 - rate) ** horizon:>10.3f}")
        print(f"  {rate:>5.2f} " + " ".join(cells))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default="digits,stdlib-lm")
    p.add_argument("--keys", type=int, default=4000)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    for name in filter(None, args.tasks.split(",")):
        cost(name)
    detection(args.keys)
    return 0


if __name__ == "__main__":
    sys.exit(main())
