"""What a trainer's round costs, measured where it ran: device time, device kind, peak memory.

The update record carries them, signed (``UpdateRecord.device_seconds``, ``devices``,
``device_kind``, ``peak_memory_bytes``); the coordinator caps the device time and sums it into
the job's budget (``prime/core/budget.py``). Device seconds are the local work's seconds times the
node's ranks (every rank is busy for the same steps). Peak memory is rank 0's: on CUDA the
allocator's peak this round (reset before it), on CPU the process's peak resident set (it never
resets, so it is an upper bound). With ``budget.memory_bytes_per_trainer`` a CUDA trainer also caps
its allocator at that many bytes, so an over-large round fails fast as out of memory instead of
finishing and being refused.
"""

from __future__ import annotations

import logging
import re

import torch

from prime.telemetry import peak_rss_bytes

log = logging.getLogger(__name__)


def device_kind(device: torch.device) -> str:
    """``cpu``, or the accelerator's name as a price-table key (``NVIDIA H200`` → ``nvidia-h200``)."""
    if device.type != "cuda":
        return device.type
    name = re.sub(r"[^a-z0-9._-]+", "-", torch.cuda.get_device_name(device).lower()).strip("-._")
    return (name or "cuda")[:48]


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return peak_rss_bytes()


def cap_memory(device: torch.device, limit: int) -> None:
    """On CUDA, let the allocator use at most ``limit`` bytes (0: no cap; CPU: checked after the round)."""
    if not limit or device.type != "cuda":
        return
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, limit / total), device)
    log.info("allocator capped at %d bytes (budget.memory_bytes_per_trainer) of %d", limit, total)
