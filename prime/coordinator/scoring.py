"""Measured contributions: what an update does to the task's held-out loss.

Per round the scorer samples one batch of the coordinator's validation set (seeded by the
round, so a restarted coordinator scores on the same batch) and computes the global
model's loss on it. Two measurements, both on that batch:

- **On arrival** (the gate): the loss with the update applied at its share of the round
  (1/n of it for n selected trainers, which is what averaging does to it). An update whose
  loss is not finite cannot be scored; one that makes the loss worse by more than
  ``scoring.harm_margin`` of it is harmful. Both are refused before they reach the
  aggregate. (Applied whole, even honest updates of a skewed shard make the held-out loss
  worse: the share is what the round will really do with it.)
- **At commit** (the worth): each update's marginal contribution, the loss of the round's
  weighted mean without it minus the loss with it (leave-one-out). An update that adds
  nothing the others did not (a copy of their mean, zeros, noise) scores about zero or
  below, however it was made; rewards follow positive marginal scores.

The running weighted sum is the only copy of the round's updates the scorer keeps; the
leave-one-out pass reads each update back from the blob store. Scoring runs in worker
threads, one evaluation at a time (the scoring model is shared), and its seconds are
counted per round. With ``prime-coordinator --device cuda`` the scoring model, the batch, the
round's global state and the running sum live on the GPU, so the forward passes and the
"apply at a share" arithmetic of a large model do not hold up the round on the CPU.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable

import torch
from torch import nn

from prime.core.config import ScoringConfig
from prime.core.datasets import Split
from prime.core.errors import CoordinatorError, UpdateRejected
from prime.core.refusals import Refusal
from prime.tasks.spec import Task

StateDict = dict[str, torch.Tensor]


def scoring_device(name: str) -> str:
    """Check a coordinator ``--device`` (cpu, cuda, cuda:N) before anything is opened."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise CoordinatorError(f"--device {name!r}: {exc}; use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise CoordinatorError(f"--device {name!r}: use cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CoordinatorError(f"--device {name}: no CUDA device is available here (torch.cuda.is_available() is False)")
    return name


class ContributionScorer:
    def __init__(self, task: Task, model: nn.Module, validation: Split, config: ScoringConfig,
                 device: torch.device | str = "cpu") -> None:
        self.task = task
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.validation = validation
        self.config = config
        self._lock = threading.Lock()
        self._batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self._global: StateDict | None = None
        self._share = 1.0
        self._sum: StateDict = {}
        self._weight = 0.0
        self.base_loss = math.nan
        self.seconds = 0.0  # scoring time in the open round

    def begin_round(self, round_number: int, global_state: StateDict, share: float = 1.0) -> None:
        """Sample this round's batch, score the global model on it; ``share`` is an update's part of the round."""
        n = len(self.validation)
        k = n if self.config.batch_samples == 0 else min(n, self.config.batch_samples)
        index = torch.randperm(n, generator=torch.Generator().manual_seed(round_number))[:k].sort().values
        with self._lock:
            started = time.perf_counter()
            self._batch = (self.validation.x[index].to(self.device), self.validation.y[index].to(self.device))
            self._global, self._share = self._here(global_state), share
            self._sum, self._weight = {}, 0.0
            self.base_loss = self._loss(global_state)
            self.seconds = time.perf_counter() - started

    @torch.no_grad()
    def _loss(self, state: StateDict) -> float:
        self.task.load_exchanged_state(self.model, state)
        x, y = self._batch
        return float(self.task.loss(self.model, x, y))

    def _here(self, state: StateDict) -> StateDict:
        """``state`` on the scoring device (the same tensors on the CPU)."""
        return {k: v.to(self.device, non_blocking=True) for k, v in state.items()}

    def _applied(self, step: dict[str, torch.Tensor], scale: float) -> StateDict:
        return {k: v + step[k].to(self.device, v.dtype) * scale for k, v in self._global.items()}

    def gate(self, delta: StateDict) -> float:
        """The held-out loss improvement of the update at its share; raises ``UpdateRejected`` if
        it cannot be scored or is harmful beyond the margin."""
        with self._lock:
            if self._global is None:
                raise RuntimeError("gate before begin_round")
            started = time.perf_counter()
            loss = self._loss(self._applied(delta, self._share))
            self.seconds += time.perf_counter() - started
        if not math.isfinite(loss):
            raise UpdateRejected(Refusal.UNSCORABLE, f"held-out loss with the update applied is {loss}")
        if loss - self.base_loss > self.config.harm_margin * abs(self.base_loss):
            raise UpdateRejected(Refusal.HARMFUL, f"held-out loss {self.base_loss:.4g} -> {loss:.4g} with the update "
                                 f"applied at its share (more than {self.config.harm_margin:.0%} worse)")
        return self.base_loss - loss

    def add(self, delta: StateDict, weight: float) -> None:
        """Fold an accepted update into the running weighted sum (for the leave-one-out pass)."""
        with self._lock:
            started = time.perf_counter()
            if not self._sum:
                self._sum = {k: torch.mul(v.to(self.device, torch.float32), weight) for k, v in delta.items()}
            else:
                for k, acc in self._sum.items():
                    acc.add_(delta[k].to(self.device, torch.float32), alpha=weight)
            self._weight += weight
            self.seconds += time.perf_counter() - started

    def marginal(self, updates: Iterable[tuple[bytes, float, StateDict]]) -> dict[bytes, float]:
        """Leave-one-out scores of the round's accepted ``(key, weight, delta)`` updates."""
        with self._lock:
            started = time.perf_counter()
            total, weight = self._sum, self._weight
            if not total or weight <= 0:
                return {}
            with_all = self._loss(self._applied(total, 1.0 / weight))
            scores = {}
            for key, w, delta in updates:
                rest = weight - w
                if rest <= 0:  # the only update: without it the round changes nothing
                    without = self.base_loss
                else:
                    step = {k: (acc - delta[k].to(self.device, torch.float32) * w) for k, acc in total.items()}
                    without = self._loss(self._applied(step, 1.0 / rest))
                score = without - with_all
                scores[key] = score if math.isfinite(score) else 0.0
            self.seconds += time.perf_counter() - started
            self._sum = {}
            return scores
