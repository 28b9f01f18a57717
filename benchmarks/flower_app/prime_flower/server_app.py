"""ServerApp: FedAvg over every SuperNode, train-only, timed per round.

Each round it records when aggregation and the server-side evaluation on the
held-out digits finished (what a prime coordinator's commit time is) and the
slowest client's ``train-seconds``; the numbers go to ``results-path`` as JSON.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from prime.core.config import TrainingConfig
from prime.tasks import resolve_task

app = ServerApp()


class TimedFedAvg(FedAvg):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.slowest_train: dict[int, float] = {}

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        seconds = [float(m.content["metrics"]["train-seconds"]) for m in replies if m.has_content()]
        self.slowest_train[server_round] = max(seconds, default=float("nan"))
        return super().aggregate_train(server_round, replies)


@app.main()
def main(grid: Grid, context: Context) -> None:
    rounds = int(context.run_config["num-server-rounds"])
    trainers = int(context.run_config["num-trainers"])
    results_path = str(context.run_config["results-path"])
    task = resolve_task("digits", {})
    test = task.load_validation()
    model = task.build_model(TrainingConfig().seed)
    committed: dict[int, float] = {}
    accuracy: dict[int, float] = {}

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        model.eval()
        with torch.no_grad():
            acc = float((model(test.x).argmax(1) == test.y).float().mean())
        committed[server_round], accuracy[server_round] = time.time(), acc
        return MetricRecord({"accuracy": acc})

    strategy = TimedFedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=trainers,
                           min_available_nodes=trainers)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=rounds,
                   train_config=ConfigRecord({"lr": 0.05}), evaluate_fn=evaluate)
    rows = [{"round": r, "committed_at": committed[r], "accuracy": accuracy[r],
             "slowest_train_seconds": strategy.slowest_train.get(r)} for r in range(0, rounds + 1)]
    if results_path:
        with open(results_path, "w") as f:
            json.dump({"rounds": rows}, f)
