"""Federated against centralized training on the same total compute: what federation costs in quality.

Federated: a real prime network on 127.0.0.1 (``LocalNetwork``: broker, DHT node, coordinator
and N trainers as processes), FedAvg over the task's non-IID shards, the coordinator's held-out
metrics after the last round. Centralized: the same ``LocalEngine`` in this process on the union
of the same shards, with the same recipe (optimizer, learning rate, schedule) and the same
total compute, evaluated on the same held-out set:

- ``digits``: R rounds of E local epochs on N shards = R·E epochs over the union (same batch
  size). Target: federated accuracy within 1 point of centralized.
- ``stdlib-lm`` (tiny): R rounds of H local steps of batch b on N shards = R·H optimizer steps
  of batch N·b on the union (the same steps, the same tokens). Target: federated bits per byte
  within 5% of centralized.

    python benchmarks/learning_quality.py [--task digits|stdlib-lm|all] [--trainers 4] [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prime.core.config import JobConfig, parse_config  # noqa: E402
from prime.core.errors import PrimeError  # noqa: E402
from prime.core.datasets import Split  # noqa: E402
from prime.demo import LocalNetwork  # noqa: E402
from prime.tasks import Shard, task_of  # noqa: E402
from prime.trainer.engine import LocalEngine, LocalWork  # noqa: E402

DEFAULT_ROUNDS = {"digits": 20, "stdlib-lm": 20}


def federated(task_name: str, trainers: int, rounds: int, work: int | None, workdir: Path
              ) -> tuple[JobConfig, dict, float]:
    """Run the demo job for ``task_name`` as real processes; (its config, final metrics, seconds).
    ``work``: local epochs (digits) or local steps (stdlib-lm) per round; None: the demo's."""
    started = time.monotonic()
    kwargs = {"local_steps": work} if task_name == "stdlib-lm" else {"local_epochs": work or 2}
    with LocalNetwork(workdir, trainers, rounds, task=task_name, **kwargs) as net:
        net.start_all()
        try:
            status = net.wait_for_rounds(rounds, 60 * rounds)
        except PrimeError as exc:
            raise SystemExit(f"{task_name}: {exc}") from None
        return net.config, status["rounds"][-1]["metrics"], time.monotonic() - started


def union(task, count: int) -> Split:
    shards = [task.load_shard(Shard(i, count)) for i in range(count)]
    return Split(torch.cat([s.x for s in shards]), torch.cat([s.y for s in shards]))


def centralized(config: JobConfig, trainers: int) -> tuple[dict, float]:
    """The same recipe and compute on the union of the shards, in one process."""
    started = time.monotonic()
    task = task_of(config)
    fed = config.federated
    if fed.local_steps:  # the same optimizer steps, each on the N trainers' batches at once
        recipe = config.training.model_dump(mode="json")
        training = parse_config({"training": {**recipe, "batch_size": recipe["batch_size"] * trainers}}).training
        work = LocalWork(steps=fed.local_steps * fed.rounds)
    else:  # the same epochs over the same samples
        training, work = config.training, LocalWork(epochs=fed.local_epochs * fed.rounds)
    engine = LocalEngine(task, training)
    engine.use_data(union(task, config.num_shards))
    start = task.build_model(training.seed).state_dict()
    delta, _ = engine.train(start, work)
    model = task.build_model(training.seed)
    model.load_state_dict({k: start[k] + delta[k] for k in start})
    return task.evaluate(model, task.load_validation()), time.monotonic() - started


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=["digits", "stdlib-lm", "all"], default="all")
    p.add_argument("--trainers", type=int, default=4)
    p.add_argument("--rounds", type=int, help="rounds (default: 20)")
    p.add_argument("--local-work", type=int, help="local epochs (digits; default 2) or local steps H "
                                                   "(stdlib-lm; default 20) per round")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    results = []
    for name in (["digits", "stdlib-lm"] if args.task == "all" else [args.task]):
        rounds = args.rounds or DEFAULT_ROUNDS[name]
        with tempfile.TemporaryDirectory(prefix=f"prime-quality-{name}-") as tmp:
            config, fed_metrics, fed_s = federated(name, args.trainers, rounds, args.local_work, Path(tmp))
        central_metrics, central_s = centralized(config, args.trainers)
        headline = task_of(config).metrics[0]
        f, c = fed_metrics[headline], central_metrics[headline]
        gap = f"{(f - c) * 100:+.2f} points" if headline == "accuracy" else f"{f / c - 1:+.2%}"
        work = (f"{config.federated.local_steps} steps" if config.federated.local_steps
                else f"{config.federated.local_epochs} epochs")
        print(f"{name}: {args.trainers} trainers x {rounds} rounds x {work}; held-out {headline}: "
              f"federated {f:.4f} ({fed_s:.0f}s, real processes), centralized {c:.4f} ({central_s:.0f}s), "
              f"federated - centralized {gap}", flush=True)
        results.append({"task": name, "trainers": args.trainers, "rounds": rounds, "metric": headline,
                        "federated": fed_metrics, "centralized": central_metrics,
                        "federated_seconds": fed_s, "centralized_seconds": central_s})
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
