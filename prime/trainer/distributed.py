"""torch.distributed setup for a trainer: FSDP2 needs a process group even on one process.

Launched by ``torchrun`` the usual environment variables are honoured (one rank per
process, NCCL for CUDA tensors, Gloo for CPU ones); otherwise a one-rank group over an
in-memory store is created, so a single CPU process can shard with ``fully_shard`` exactly
as a multi-GPU node would.
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from prime.core.errors import TrainerError

#: How long a rank waits inside one collective. Ranks above 0 wait for rank 0's next command
#: between rounds, which can be long; if a rank dies, torchrun stops the others.
COLLECTIVE_TIMEOUT = timedelta(days=1)


def resolve_device(name: str | None = None) -> torch.device:
    """The device this rank trains on: ``cpu``, ``cuda``, or (None) its local GPU if there is one."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise TrainerError("--device cuda: no CUDA device is available here (torch.cuda.is_available() is False)")
        return torch.device("cuda", local_rank)
    if name == "cpu":
        return torch.device("cpu")
    raise TrainerError(f"unknown device {name!r}; use cpu or cuda")


def ensure_process_group(device: torch.device | None = None) -> torch.device:
    """Initialise the default process group once per process; return the device to train on."""
    device = device or resolve_device()
    if dist.is_initialized():
        return device
    backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
    if "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return device


def is_leader() -> bool:
    """Rank 0 of a torchrun node (or a plain single process): the rank that owns the network side."""
    return int(os.environ.get("RANK", "0")) == 0


def close_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def leave_torchrun(code: int) -> int:
    """End a torchrun rank now that its process group is closed, skipping interpreter teardown.

    Gloo's worker threads can outlive ``destroy_process_group`` by a moment; if interpreter
    finalization reaches them first the C++ runtime aborts the rank ("terminate called without
    an active exception", SIGABRT), torchrun then SIGTERMs the other ranks and the node exits
    non-zero after a clean run. A plain process (no ``WORLD_SIZE`` > 1) returns ``code``.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return code
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
