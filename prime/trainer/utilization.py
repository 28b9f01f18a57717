"""Compute utilization: the fraction of a trainer's wall time spent in inner steps.

A round's wall time runs from the trainer's previous submission (or, when it did not submit
the round before, from when it took this round up) to this round's submission; its inner time
is the step loop of the block that became this round's update (``TrainMetrics.seconds``: not
the model load, the state gather, the delta, the encoding or the upload). Without overlap the
gap holds the wait for the commit, the announcement and the model fetch; with overlap the next
block runs in it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class RoundUse:
    round: int
    inner_seconds: float
    wall_seconds: float
    overlapped: bool

    @property
    def fraction(self) -> float:
        return min(1.0, self.inner_seconds / self.wall_seconds) if self.wall_seconds > 0 else 0.0


class Utilization:
    """Per-round and running totals, for the trainer's ``metrics.json``."""

    def __init__(self, keep: int = 200) -> None:
        self.rounds: deque[RoundUse] = deque(maxlen=keep)
        self.inner_seconds = 0.0
        self.wall_seconds = 0.0
        self._last: tuple[int, float] | None = None  # (round, monotonic time) of the last submission

    def submitted(self, round_number: int, inner_seconds: float, began: float, now: float,
                  overlapped: bool) -> RoundUse:
        """Round ``round_number`` was sent at ``now``; its work was taken up at ``began`` (monotonic)."""
        last = self._last
        start = last[1] if last is not None and last[0] == round_number - 1 else began
        use = RoundUse(round_number, inner_seconds, max(now - start, 0.0), overlapped)
        self.rounds.append(use)
        self.inner_seconds += use.inner_seconds
        self.wall_seconds += use.wall_seconds
        self._last = (round_number, now)
        return use

    def metrics(self) -> dict:
        total = min(1.0, self.inner_seconds / self.wall_seconds) if self.wall_seconds > 0 else 0.0
        return {"fraction": total, "inner_seconds": self.inner_seconds, "wall_seconds": self.wall_seconds,
                "rounds": [{**asdict(u), "fraction": u.fraction} for u in self.rounds]}
