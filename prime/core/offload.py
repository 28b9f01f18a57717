"""Where tensor work runs: on the event loop when it is small, in a worker thread when large.

Encoding, hashing, decoding and aggregating a large model must never stall a node's
event loop (heartbeats, bus and DHT traffic run there). For a small one, the hop to a
worker thread and back costs more than the work itself (two wake-ups, each a wait for a
core on a busy machine), and a round pays it several times on its critical path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ParamSpec, TypeVar

#: Work over at most this many bytes runs inline: ~0.1 ms of hashing or copying.
INLINE_MAX_BYTES = 256 * 1024

P = ParamSpec("P")
R = TypeVar("R")


async def run_sized(nbytes: int, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """``fn(*args, **kwargs)``, inline if it handles at most ``INLINE_MAX_BYTES``, else in a thread."""
    if nbytes <= INLINE_MAX_BYTES:
        return fn(*args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)


def state_bytes(state: dict) -> int:
    """Bytes of tensor data in a state dict (what encoding or aggregating it touches)."""
    return sum(t.numel() * t.element_size() for t in state.values())
