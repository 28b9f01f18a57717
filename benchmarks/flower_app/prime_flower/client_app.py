"""ClientApp: one local-training step of a prime trainer, on Flower.

Same model (the ``digits`` task's MLP), same Dirichlet shard
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

from prime.core.config import TrainingConfig
from prime.tasks import Shard, resolve_task
from prime.trainer.data import DataPosition, global_batches

app = ClientApp()
TASK = resolve_task("digits", {})  # hidden [128], Dirichlet(0.5), 20% held out, split seed 0
_DATA: dict[tuple[int, int], object] = {}


def _shard(index: int, num: int):
    if (index, num) not in _DATA:
        _DATA[(index, num)] = TASK.load_shard(Shard(index, num))
    return _DATA[(index, num)]


def batches(data, batch_size: int, seed: int, epoch: int):
    """One epoch of prime's batch order (the engine's ``global_batches``)."""
    for batch in global_batches(len(data), batch_size, seed, DataPosition(epoch, 0)):
        if batch.epoch != epoch:
            return
        yield data.x[batch.index], data.y[batch.index]


def _warm_up(data) -> None:
    """One forward/backward/step on a throwaway model: first-call costs of a cold torch."""
    model = TASK.build_model(1)
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
    model = TASK.build_model(cfg.seed)
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
