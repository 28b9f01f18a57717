"""The ``Strategy`` interface: streaming aggregation of model deltas.

Updates are *deltas* (local weights minus the global weights they started from),
so a strategy can bound and score them independently of the global model. The
interface streams — ``begin``, ``add`` per verified update, ``finish`` — so the
coordinator never holds more than the running aggregate plus one update.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Contribution:
    """One accepted update as the strategy sees it."""

    contributor: bytes
    delta: StateDict
    num_samples: int


class Strategy(ABC):
    """Aggregates deltas into a new global model and scores each contributor."""

    @abstractmethod
    def begin(self, global_state: StateDict) -> None:
        """Start a round from ``global_state``."""

    @abstractmethod
    def add(self, contribution: Contribution) -> None:
        """Fold in one verified contribution."""

    @abstractmethod
    def finish(self) -> tuple[StateDict, dict[bytes, float]]:
        """New global state and each contributor's score (weights that sum to 1)."""
