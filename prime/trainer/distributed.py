"""torch.distributed setup for a trainer: FSDP2 needs a process group even on one process.

Launched by ``torchrun`` the usual environment variables are honoured; otherwise a
one-rank group over an in-memory store is created, so a single CPU process can
shard with ``fully_shard`` exactly as a multi-GPU node would.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def device() -> torch.device:
    """The device this rank trains on: its local GPU if there is one, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def ensure_process_group() -> None:
    """Initialise the default process group once per process."""
    if dist.is_initialized():
        return
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    if "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ:
        if torch.cuda.is_available():
            torch.cuda.set_device(device())
        dist.init_process_group(backend)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


def close_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
