"""run_sized: small work inline on the event loop, large work in a worker thread."""

from __future__ import annotations

import threading

import torch

from prime.core.offload import INLINE_MAX_BYTES, run_sized, state_bytes


async def test_small_work_runs_on_the_loop_thread_and_large_work_off_it():
    here = threading.get_ident()
    assert await run_sized(INLINE_MAX_BYTES, threading.get_ident) == here
    assert await run_sized(INLINE_MAX_BYTES + 1, threading.get_ident) != here


async def test_arguments_and_results_pass_through():
    assert await run_sized(1, lambda a, *, b: a + b, 2, b=3) == 5
    assert await run_sized(1 << 30, lambda a, *, b: a + b, 2, b=3) == 5


def test_state_bytes_counts_tensor_data():
    assert state_bytes({"w": torch.zeros(3, 4), "b": torch.zeros(5, dtype=torch.float64)}) == 3 * 4 * 4 + 5 * 8
