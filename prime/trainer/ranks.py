"""Rank roles on a multi-rank trainer node (``torchrun --nproc-per-node N``).

Rank 0 alone owns the node's identity, bus, DHT peer, blob service and checkpoints. The
other ranks own nothing but their slice of the training: they wait in ``LocalEngine.follow`` for
rank 0 to say which collective comes next (use a shard, train a round, gather or load a
checkpoint, stop) and then take part in it. A command is a small int64 tensor broadcast
from rank 0; tensors travel by torch.distributed's own broadcast (nothing is pickled).
"""

from __future__ import annotations

from enum import IntEnum

import torch
import torch.distributed as dist

_ARGS = 4


class Command(IntEnum):
    SHARD = 1  # args: index, count
    TRAIN = 2  # args: epochs, steps, start_step, order_seed (reproducible rounds); the global state follows
    STATE = 3  # gather model and optimizer state to rank 0 (checkpoint)
    LOAD = 4  # args: epoch, batch, steps_done (the state follows by broadcast)
    STOP = 5
    TRAIN_ON = 6  # args: epochs, steps; train on from the current weights (federated.overlap)


class RankChannel:
    """Rank 0's word to the other ranks; a no-op on a one-rank node."""

    def __init__(self, rank: int, world_size: int, device: torch.device) -> None:
        self.rank, self.world_size = rank, world_size
        # Gloo broadcasts CPU tensors, NCCL CUDA ones.
        self.device = device if dist.get_backend() == "nccl" else torch.device("cpu")

    def lead(self, command: Command, *args: int) -> None:
        if self.world_size == 1:
            return
        if self.rank != 0:
            raise RuntimeError("only rank 0 leads a node's collectives")
        message = torch.zeros(1 + _ARGS, dtype=torch.int64, device=self.device)
        message[0] = int(command)
        message[1:1 + len(args)] = torch.tensor(args, dtype=torch.int64)
        dist.broadcast(message, src=0)

    def receive(self) -> tuple[Command, list[int]]:
        message = torch.zeros(1 + _ARGS, dtype=torch.int64, device=self.device)
        dist.broadcast(message, src=0)
        values = message.tolist()
        return Command(values[0]), values[1:]
