"""ClientApp: one local-training step of a prime trainer, on Flower.

Same model (``build_model(ModelConfig())``), same Dirichlet shard
(``partition-id`` of ``num-partitions``, α=0.5, seed 0, 20% held out), same optimizer
(SGD lr 0.05, momentum 0.9, batch 32) and batch order as ``prime.trainer.engine``;
momentum and the epoch counter persist across rounds in ``context.state`` as a
prime trainer's engine keeps them. ``train-seconds`` times the same span a prime
trainer reports (load global weights → local epochs → weights out). Flower starts a
fresh ``flwr-clientapp`` process for every message, so torch is cold each round; one
untimed warm-up step on a throwaway copy keeps that start-up cost out of
``train-seconds`` (it is Flower's per-round process cost, counted as protocol).
"""

from __future__ import annotations

import time

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from prime.core.config import DataConfig, ModelConfig, TrainingConfig
from prime.core.datasets import load_digits_split, partition
from prime.core.models import build_model
from prime.trainer.data import batches

app = ClientApp()
_DATA: dict[tuple[int, int], object] = {}


def _shard(index: int, num: int):
    if (index, num) not in _DATA:
        cfg = DataConfig(num_partitions=num)
        train, _ = load_digits_split(cfg.test_fraction, cfg.seed)
        _DATA[(index, num)] = partition(train, num, index, cfg.dirichlet_alpha, cfg.seed)
    return _DATA[(index, num)]


def _warm_up(data) -> None:
    """One forward/backward/step on a throwaway model: first-call costs of a cold torch."""
    model = build_model(ModelConfig(), seed=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss = nn.functional.cross_entropy(model(data.x[:32]), data.y[:32])
    loss.backward()
    optimizer.step()


@app.train()
def train(msg: Message, context: Context) -> Message:
    index = int(context.node_config["partition-id"])
    num = int(context.node_config["num-partitions"])
    epochs = int(context.run_config["local-epochs"])
    data = _shard(index, num)
    cfg = TrainingConfig()  # batch 32, lr 0.05, SGD momentum 0.9: prime's demo job
    lr, momentum = 0.05, 0.9

    _warm_up(data)
    started = time.perf_counter()
    model = build_model(ModelConfig(), seed=cfg.seed)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    epochs_done = 0
    if "optimizer" in context.state:  # momentum carries over between rounds, as in prime's engine
        buffers = context.state["optimizer"].to_torch_state_dict()
        for i, p in enumerate(model.parameters()):
            optimizer.state[p]["momentum_buffer"] = buffers[str(i)]
        epochs_done = int(context.state["progress"]["epochs_done"])
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    for _ in range(epochs):
        loss_sum, correct, seen = 0.0, 0, 0
        for x, y in batches(data, cfg.batch_size, cfg.seed, epochs_done):
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += len(y)
        epochs_done += 1
    weights = ArrayRecord(model.state_dict())
    train_seconds = time.perf_counter() - started

    context.state["optimizer"] = ArrayRecord(
        {str(i): optimizer.state[p]["momentum_buffer"] for i, p in enumerate(model.parameters())}
    )
    context.state["progress"] = ConfigRecord({"epochs_done": epochs_done})
    metrics = MetricRecord({
        "train-loss": loss_sum / max(seen, 1),
        "train-accuracy": correct / max(seen, 1),
        "train-seconds": train_seconds,
        "num-examples": seen,
    })
    return Message(content=RecordDict({"arrays": weights, "metrics": metrics}), reply_to=msg)
