"""Overlap (``federated.overlap``): the one-step-delayed outer update of streaming/async DiLoCo.

Without overlap a trainer waits, after sending round r's update, for round r's commit and
round r+1's announcement before it computes again. With overlap it trains its next block of
H inner steps at once, from its own weights, while its update uploads and the coordinator
aggregates and commits:

- round r's update u_r (sent against the announced global x_r) leaves the trainer at
  x_r + u_r, and the next block starts there;
- when round r+1 is announced (global x_{r+1}), the block's progress p = end − start is sent
  as round r+1's update, and the next block starts from ``rebased(x_{r+1}, p)`` = x_{r+1} + p:
  the trainer keeps its own progress and takes everyone else's from the new global.

Staleness: exactly one outer step. The inner steps behind round r+1's update ran on weights
that include the trainer's own u_r but not the outer step x_{r+1} − x_r; the coordinator sees an
ordinary update for round r+1 (same record, model version, checks and claim cap) and cannot
tell it apart. A block is used only for the round right after the one it followed, on the same
shard; any other announcement (the trainer was not selected, missed a round, restarted) makes
the trainer drop the block and train from the announced global, the non-overlapped path.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import torch

StateDict = dict[str, torch.Tensor]


def rebased(global_state: StateDict, progress: StateDict) -> StateDict:
    """The next block's start: the new global plus this trainer's own progress (in fp32)."""
    if global_state.keys() != progress.keys():
        raise ValueError("progress and global state name different tensors")
    return {name: torch.add(g.to(progress[name].dtype), progress[name]) for name, g in global_state.items()}


@dataclass
class AheadBlock:
    """A block of inner steps trained ahead, started right after round ``after_round``'s update was sent.

    ``task`` gives (progress, metrics, wall seconds of the block)."""

    after_round: int
    shard: int | None
    task: asyncio.Task
    #: Set when the block may not be sent at all (it followed an update that never left).
    void: str | None = None

    def unusable_for(self, round_number: int, shard: int | None) -> str | None:
        """Why this block cannot be round ``round_number``'s update on ``shard`` (None: it can)."""
        if self.void:
            return self.void
        if round_number != self.after_round + 1:
            return f"it followed round {self.after_round}, this is round {round_number}"
        if shard != self.shard:
            return f"it trained on shard {self.shard}, this round assigns shard {shard}"
        return None
