"""Local training engine: one FSDP2-sharded model, its optimizer and schedule.

The engine knows nothing of rounds or networks: it loads a global state, trains
some epochs on local data, and returns the delta (local minus global). It exposes
``state_dict``/``load_state_dict`` so trainer checkpoints capture model, optimizer
and data position together.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from prime.core.config import JobConfig, OptimizerName, SchedulerName, TrainingConfig
from prime.core.datasets import Split
from prime.core.models import build_model
from prime.trainer.data import batches
from prime.trainer.distributed import device, ensure_process_group

StateDict = dict[str, torch.Tensor]
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


@dataclass(frozen=True)
class EpochMetrics:
    loss: float
    accuracy: float
    samples_per_second: float
    num_samples: int


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """A full CPU tensor, whatever FSDP2 handed back (some paths return a DTensor)."""
    if isinstance(tensor, DTensor):
        tensor = tensor.full_tensor()
    return tensor.detach().to("cpu", copy=True)  # on CPU .to() would alias the live parameters


def shard_model(model: nn.Module) -> nn.Module:
    """Apply FSDP2: each child block is its own shard unit, then the root."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            fully_shard(module)
    fully_shard(model)
    return model


def build_optimizer(params, config: TrainingConfig) -> torch.optim.Optimizer:
    opt = config.optimizer
    if opt.name is OptimizerName.SGD:
        return torch.optim.SGD(params, lr=config.learning_rate, momentum=opt.momentum, weight_decay=opt.weight_decay)
    betas = (opt.beta1, opt.beta2)
    if opt.name is OptimizerName.ADAM:
        return torch.optim.Adam(params, lr=config.learning_rate, betas=betas, weight_decay=opt.weight_decay)
    return torch.optim.AdamW(params, lr=config.learning_rate, betas=betas, weight_decay=opt.weight_decay)


def learning_rate(config: TrainingConfig, epoch: int) -> float:
    """Learning rate for a trainer's ``epoch``-th local epoch (0-based)."""
    sched = config.scheduler
    if sched.name is SchedulerName.CONSTANT:
        return config.learning_rate
    t = min(epoch, sched.t_max)
    return sched.eta_min + (config.learning_rate - sched.eta_min) * (1 + math.cos(math.pi * t / sched.t_max)) / 2


class LocalEngine:
    def __init__(self, config: JobConfig, data: Split, model: nn.Module | None = None) -> None:
        ensure_process_group()
        self.config = config
        self.data = data
        self.device = device()
        if model is None:
            model = build_model(config.model, seed=config.training.seed)
        self.model = shard_model(model.to(self.device))
        self.optimizer = build_optimizer(self.model.parameters(), config.training)
        self.epochs_done = 0

    def global_state(self) -> StateDict:
        """The model's full (unsharded) weights on CPU, as plain tensors."""
        state = get_model_state_dict(self.model, options=_FULL)
        return {k: _plain(v) for k, v in state.items()}

    def load_global(self, state: StateDict) -> None:
        # set_model_state_dict replaces the dict's values with DTensors: give it a copy.
        set_model_state_dict(self.model, dict(state), options=StateDictOptions(full_state_dict=True))

    def train_epochs(self, start: StateDict, epochs: int) -> tuple[StateDict, EpochMetrics]:
        """Train ``epochs`` local epochs from ``start``; return (delta, last epoch's metrics)."""
        self.load_global(start)
        self.model.train()
        metrics = EpochMetrics(0.0, 0.0, 0.0, 0)
        for _ in range(epochs):
            metrics = self._one_epoch()
        end = self.global_state()
        delta = {k: end[k] - start[k].to(end[k].dtype) for k in end}
        return delta, metrics

    def _one_epoch(self) -> EpochMetrics:
        cfg = self.config.training
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(cfg, self.epochs_done)
        t0 = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0, 0
        for x, y in batches(self.data, cfg.batch_size, cfg.seed, self.epochs_done):
            x, y = x.to(self.device), y.to(self.device)
            logits = self.model(x)
            loss = nn.functional.cross_entropy(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.gradient_clipping > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.gradient_clipping)
            self.optimizer.step()
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += len(y)
        self.epochs_done += 1
        elapsed = max(time.perf_counter() - t0, 1e-9)
        return EpochMetrics(loss_sum / max(seen, 1), correct / max(seen, 1), seen / elapsed, seen)

    def state_dict(self) -> dict:
        return {
            "model": self.global_state(),
            "optimizer": get_optimizer_state_dict(self.model, self.optimizer, options=_FULL),
            "epochs_done": self.epochs_done,
        }

    def load_state_dict(self, state: dict) -> None:
        self.load_global(state["model"])
        set_optimizer_state_dict(
            self.model, self.optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True)
        )
        self.epochs_done = int(state["epochs_done"])
