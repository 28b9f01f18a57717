"""Tasks end to end, real processes on 127.0.0.1: the built-in language model, a user's own task
named by entry point, a trainer whose job config differs, and a corrupt data file.

- ``stdlib-lm`` (tiny) trains across two trainers: held-out bits per byte fall round by round,
  and the exported model, loaded with ``prime.load_model``, scores what the coordinator committed.
- A user task (``my_pkg.tasks:spec``, a package in the network's working directory) with its data
  files under ``--data-path`` trains from the CLI; a trainer whose shard file is truncated says
  which file and keeps serving, and the rounds commit without it.
- A trainer started with another learning rate refuses every round and names the key that
  differs; the rounds commit without it.
"""

from __future__ import annotations

import json
import random
import time

import pytest

import prime
from prime.coordinator.export import export_version
from prime.core.config import dump_toml, parse_config
from prime.demo import LocalNetwork
from prime.tasks import task_of
from prime.telemetry import read_metrics
from tests.integration.netutil import wait_for

pytestmark = pytest.mark.slow

USER_TASK = '''
"""A user's task: logistic regression on JSON-lines files under the trainer's --data-path."""
import json
from pathlib import Path

import torch
from torch import nn

from prime.core.datasets import Split
from prime.core.errors import TaskError
from prime.tasks import TaskOptions, TaskSpec
from prime.tasks.metrics import evaluate_classifier


class Options(TaskOptions):
    features: int = 4


def read(path: Path) -> Split:
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return Split(torch.tensor([r["x"] for r in rows]), torch.tensor([r["y"] for r in rows]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TaskError(f"{path}: not a data file of this task ({type(exc).__name__}: {exc})") from None


spec = TaskSpec(
    name="blobs", options=Options,
    build_model=lambda options, seed: nn.Sequential(nn.Linear(options.features, 2)),
    load_shard=lambda options, shard: read(Path(shard.data_path) / f"part-{shard.index}.jsonl"),
    load_validation=lambda options, path: read(Path(path) / "validation.jsonl"),
    loss=lambda options, model, x, y: nn.functional.cross_entropy(model(x), y),
    evaluate=lambda options, model, data: evaluate_classifier(model, data),
    metrics=("accuracy", "loss"),
)
'''


def _blobs(path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    with open(path, "w") as out:
        for i in range(n):
            label = i % 2
            x = [rng.gauss(1.0 if label else -1.0, 1.0) for _ in range(4)]
            out.write(json.dumps({"x": x, "y": label}) + "\n")


def test_stdlib_lm_trains_falls_round_by_round_and_exports(tmp_path):
    net = LocalNetwork(tmp_path / "net", trainers=2, rounds=3, task="stdlib-lm",
                       federated={"local_steps": 10})
    try:
        net.start_all()
        status = wait_for(net, lambda s: s["rounds_committed"] >= 3 and s, 150, "3 language-model rounds")
    finally:
        net.stop_all()
    assert status["task"] == "stdlib-lm" and status["rejected_updates"] == []
    bpb = [r["metrics"]["bits_per_byte"] for r in status["rounds"]]
    assert all(a > b for a, b in zip(bpb, bpb[1:])) and bpb[-1] < 6.0, bpb  # 8 is a uniform guess
    assert {"loss", "perplexity"} <= set(status["rounds"][-1]["metrics"])

    card = export_version(net.coordinator_dir, "latest", tmp_path / "out" / "model.safetensors")
    assert card["task"] == "stdlib-lm" and card["round"] == 3 and card["model_version"] == 3
    model = prime.load_model(tmp_path / "out" / "model.safetensors")
    task = task_of(net.config)
    again = task.evaluate(model, task.load_validation())
    assert again["bits_per_byte"] == pytest.approx(bpb[-1], rel=1e-5)


def test_user_task_from_an_entry_point_and_a_corrupt_shard(tmp_path):
    workdir = tmp_path / "net"
    (workdir / "my_pkg").mkdir(parents=True)
    (workdir / "my_pkg" / "__init__.py").write_text("")
    (workdir / "my_pkg" / "tasks.py").write_text(USER_TASK)  # processes run in workdir: importable there
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        _blobs(data / f"part-{i}.jsonl", 200, seed=i)
    _blobs(data / "validation.jsonl", 200, seed=99)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "part-2.jsonl").write_text((data / "part-2.jsonl").read_text()[:5000])  # cut mid-line

    net = LocalNetwork(workdir, trainers=3, rounds=2, local_epochs=1,
                       task={"name": "my_pkg.tasks:spec", "options": {"features": 4}},
                       federated={"min_clients": 2, "round_timeout": 6.0})
    try:
        net.start_infrastructure()
        net.start_coordinator("--data-path", str(data))
        net.start_trainer(0, "--data-path", str(data))
        net.start_trainer(1, "--data-path", str(data))
        net.start_trainer(2, "--data-path", str(broken))
        status = wait_for(net, lambda s: s["rounds_committed"] >= 2 and s, 120, "2 rounds of the user task")
        alive = net.procs[net.trainer_names[2]].poll() is None
    finally:
        net.stop_all()
    assert status["task"] == "my_pkg.tasks:spec"
    assert status["rounds"][-1]["metrics"]["accuracy"] > 0.85
    assert all(r["participants"] == 2 for r in status["rounds"])
    assert alive, "a corrupt data file must not kill the trainer"
    log = net.log_tail(net.trainer_names[2], 200)
    assert f"{broken / 'part-2.jsonl'}: not a data file of this task" in log, log


def test_trainer_with_other_terms_refuses_and_names_the_keys(tmp_path):
    net = LocalNetwork(tmp_path / "net", trainers=2, rounds=2, local_epochs=1,
                       federated={"min_clients": 1, "round_timeout": 4.0})
    data = net.config.model_dump(mode="json")
    other = parse_config({**data, "training": {**data["training"], "learning_rate": 0.2}}, "other.toml")
    other_path = net.workdir / "other.toml"
    other_path.write_text(dump_toml(other))
    odd = net.trainer_names[1]
    try:
        net.start_infrastructure()
        net.start_coordinator()
        net.start_trainer(0)
        net.start_trainer(1, "--config", str(other_path))  # the later --config wins
        status = wait_for(net, lambda s: s["rounds_committed"] >= 2 and s, 90, "2 rounds without the odd trainer")
        deadline = time.monotonic() + 10
        while "learning_rate" not in net.log_tail(odd, 100) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        net.stop_all()
    assert set(status["rewards"]) == {net.trainer_names[0]}
    log = net.log_tail(odd, 100)
    assert "differs from the coordinator's" in log and "training.learning_rate: here 0.2, coordinator 0.05" in log, log
    assert read_metrics(net.trainer_dir(odd))["dropped_messages"]["config_mismatch"] >= 1
