"""What a trainer measures for the budget: device kind, peak memory, and the CUDA allocator cap."""

from __future__ import annotations

import re

import pytest
import torch

from prime.trainer.budget import cap_memory, device_kind, peak_memory_bytes, reset_peak


def test_on_cpu_the_kind_is_cpu_and_the_peak_is_the_process_peak():
    cpu = torch.device("cpu")
    assert device_kind(cpu) == "cpu"
    before = peak_memory_bytes(cpu)
    assert before > 0
    cap_memory(cpu, 1)  # no allocator cap on CPU: the trainer checks its peak after the round
    reset_peak(cpu)
    assert peak_memory_bytes(cpu) >= before  # a process peak never goes down


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_peak_is_this_rounds_and_the_cap_stops_larger_allocations():
    gpu = torch.device("cuda", 0)
    kind = device_kind(gpu)
    assert re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,47}", kind), kind
    reset_peak(gpu)
    x = torch.empty(256 << 20, dtype=torch.uint8, device=gpu)
    assert peak_memory_bytes(gpu) >= 256 << 20
    del x
    torch.cuda.empty_cache()
    reset_peak(gpu)
    assert peak_memory_bytes(gpu) < 256 << 20
    cap_memory(gpu, 1 << 30)
    try:
        with pytest.raises(torch.OutOfMemoryError):
            torch.empty(2 << 30, dtype=torch.uint8, device=gpu)
        y = torch.empty(512 << 20, dtype=torch.uint8, device=gpu)  # below the cap: fine
        del y
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, gpu)
    print(f"device_kind {kind}")
