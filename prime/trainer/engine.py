"""Local training engine: one FSDP2-sharded model of a task, its optimizer and schedule.

The engine knows nothing of rounds or networks: it loads a global state, runs the
round's local work (epochs, or H optimizer steps) on its data, and returns the delta
(local minus global, in fp32 against the fp32 global weights; DiLoCo's pseudo-gradient is
its negation). Started from ``None`` it trains on from its current weights instead and
returns its own progress (``federated.overlap``). It exposes
``state_dict``/``load_state_dict`` so trainer checkpoints capture model, optimizer,
schedule step and data position together.

Under ``torchrun`` one node is several ranks. Every public method here is then a
collective: rank 0 (which owns the node's network side) calls it, and first tells the
other ranks, which wait in :meth:`LocalEngine.follow`, to make the same call. Every
rank receives the global state by broadcast, trains on its own slice of each global
batch (so the node's update is what one process computes on the whole batch), FSDP2
reduces the gradients, and rank 0 gathers the full state for the delta.

With ``training.reproducible_rounds`` a round is a pure function of public inputs (the
global state, the job, the round number, the shard and the job's config), so a verifier can
recompute it (``prime/coordinator/spotcheck.py``): each round starts from a fresh optimizer,
its schedule step is where a trainer that took every round would be, and its batches follow
an order seeded by (job, round, shard, seed) from epoch 0 batch 0, dropping short batches
(so N ranks compute what one process does, epochs too). The caller names the round with a
:class:`RoundKey`.

FedProx (``proximal_mu > 0``) adds the gradient of (μ/2)·‖w − w_global‖² to every optimizer
step: exactly what adding that term to each micro-batch's loss does (the accumulated mean of
the term's gradient is μ·(w − w_global), whatever the group size), computed on the fp32
master shards instead of through the forward pass, so it costs no activation memory and
needs no collective. The reported loss stays the task's.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import threading
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.utils.checkpoint import checkpoint

from prime.core.config import FederatedConfig, OptimizerName, Precision, SchedulerName, TrainingConfig
from prime.core.datasets import Split
from prime.core.errors import TrainerError
from prime.tasks.spec import Shard, Task
from prime.trainer.data import DataPosition, batches_per_epoch, global_batches, rank_slice, round_seed
from prime.trainer.distributed import ensure_process_group
from prime.trainer.ranks import Command, RankChannel

log = logging.getLogger(__name__)
StateDict = dict[str, torch.Tensor]
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


@dataclass(frozen=True)
class LocalWork:
    """What one round asks of a trainer: ``steps`` optimizer steps, or else ``epochs`` epochs."""

    epochs: int = 1
    steps: int = 0

    @classmethod
    def of(cls, federated: FederatedConfig) -> "LocalWork":
        return cls(epochs=federated.local_epochs, steps=federated.local_steps)


@dataclass(frozen=True)
class RoundKey:
    """Which round a reproducible round is: with the job's config, all its batch order and
    schedule depend on (``job_id`` is hashed, never sent to other ranks)."""

    job_id: str
    round: int  # 1-based, as announced
    shard: int

    def order_seed(self, seed: int) -> int:
        return round_seed(self.job_id, self.round, self.shard, seed)


@dataclass(frozen=True)
class _RoundPlan:
    """What a reproducible round needs on every rank: two integers, so they travel in a command."""

    order_seed: int
    start_step: int


@dataclass(frozen=True)
class TrainMetrics:
    loss: float  # mean training loss over the round's micro-batches (all ranks)
    samples_per_second: float
    tokens_per_second: float
    num_samples: int  # samples the node trained on this round (all ranks)
    steps: int  # optimizer steps this round
    seconds: float  # wall time of the step loop (synchronized on CUDA)
    #: What a round adds to the step loop, apart so a node on many GPUs can see where its round
    #: goes: loading the start state into the sharded model (broadcast from rank 0), and gathering
    #: the full state to rank 0's CPU and subtracting for the delta (0.0 where not measured).
    load_seconds: float = 0.0
    gather_seconds: float = 0.0


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """A full CPU tensor, whatever FSDP2 handed back (some paths return a DTensor)."""
    if isinstance(tensor, DTensor):
        tensor = tensor.full_tensor()
    return tensor.detach().to("cpu", copy=True)  # on CPU .to() would alias the live parameters


def _checkpointed(unit: nn.Module) -> None:
    """Recompute ``unit``'s activations in backward instead of keeping them (same names, same math)."""
    forward = unit.forward
    unit.forward = functools.partial(checkpoint, forward, use_reentrant=False)


def shard_model(model: nn.Module, units: list[nn.Module], training: TrainingConfig, device: torch.device,
                world_size: int = 1) -> nn.Module:
    """Apply FSDP2: each of the task's shard units, then the root.

    bf16 precision is FSDP2's ``MixedPrecisionPolicy``: parameters are cast to bf16 for
    forward and backward, gradients are reduced in fp32, and the sharded master weights stay
    fp32. On one rank there is nothing to reshard for, so unsharded parameters stay between
    forward and backward (one cast per step instead of two)."""
    bf16 = training.precision is Precision.BF16
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
        else MixedPrecisionPolicy()
    reshard = world_size > 1
    for unit in units:
        if training.activation_checkpointing:
            _checkpointed(unit)
        if training.compile and device.type == "cuda":
            unit.compile()
        fully_shard(unit, mp_policy=policy, reshard_after_forward=reshard)
    fully_shard(model, mp_policy=policy, reshard_after_forward=reshard)
    return model


def build_optimizer(params, config: TrainingConfig, device: torch.device) -> torch.optim.Optimizer:
    opt = config.optimizer
    if opt.name is OptimizerName.SGD:
        return torch.optim.SGD(params, lr=config.learning_rate, momentum=opt.momentum, weight_decay=opt.weight_decay)
    kwargs = {"lr": config.learning_rate, "betas": (opt.beta1, opt.beta2), "weight_decay": opt.weight_decay}
    if device.type == "cuda":
        kwargs["fused"] = True  # one kernel for the whole update instead of several per parameter
    if opt.name is OptimizerName.ADAM:
        return torch.optim.Adam(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def learning_rate(config: TrainingConfig, step: int) -> float:
    """Learning rate of a trainer's ``step``-th optimizer step (0-based, counted across rounds)."""
    sched = config.scheduler
    if step < sched.warmup_steps:
        return config.learning_rate * (step + 1) / sched.warmup_steps
    if sched.name is SchedulerName.CONSTANT:
        return config.learning_rate
    t = min(step - sched.warmup_steps, sched.t_max)
    return sched.eta_min + (config.learning_rate - sched.eta_min) * (1 + math.cos(math.pi * t / sched.t_max)) / 2


def state_mismatch(model_state: StateDict, global_state: StateDict) -> list[str]:
    """What differs between a model's state and the job's global state (empty: they match)."""
    problems = [f"missing in this model: {k}" for k in sorted(set(global_state) - set(model_state))]
    problems += [f"not in the global model: {k}" for k in sorted(set(model_state) - set(global_state))]
    for name in sorted(set(model_state) & set(global_state)):
        mine, theirs = model_state[name], global_state[name]
        if tuple(mine.shape) != tuple(theirs.shape):
            problems.append(f"{name}: shape {tuple(mine.shape)} here, {tuple(theirs.shape)} in the global model")
    return problems


def _add_epochs(before: DataPosition, done: DataPosition, per_epoch: int) -> DataPosition:
    """A reproducible round's own position (from its epoch 0) added to the epochs done before it:
    the position then only counts epochs (``training.max_epochs``); it no longer orders batches."""
    epoch, batch = divmod(before.batch + done.batch, per_epoch)
    return DataPosition(before.epoch + done.epoch + epoch, batch)


class LocalEngine:
    def __init__(self, task: Task, training: TrainingConfig, model: nn.Module | None = None, *,
                 device: torch.device | None = None, data_path=None, proximal_mu: float = 0.0) -> None:
        if not proximal_mu >= 0.0:
            raise TrainerError(f"proximal_mu must be >= 0, got {proximal_mu}")
        self.proximal_mu = float(proximal_mu)  # FedProx's μ (prime.core.aggregation.proximal_mu)
        self.device = ensure_process_group(device)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.task = task
        self.training = training
        self.data_path = data_path
        self.channel = RankChannel(self.rank, self.world_size, self.device)
        model = model if model is not None else task.build_model(training.seed)
        # The exchanged state (all of it, or a fine-tuning task's adapters): names and shapes, taken
        # before sharding (FSDP2 keeps the names).
        self.exchanged = task.exchanged_names(model)
        own = model.state_dict()
        self.shapes = {k: tuple(own[name].shape) for k, name in self.exchanged.items()}
        del own
        self.model = shard_model(model.to(self.device), task.shard_units(model), training, self.device,
                                 self.world_size)
        self.optimizer = build_optimizer(self._trainable(), training, self.device)
        self.data: Split | None = None
        self.shard: Shard | None = None
        self.position = DataPosition()
        self.steps_done = 0
        self._lock = threading.Lock()  # one collective at a time (the round and a user's save_checkpoint)
        self._closed = False

    @property
    def epochs_done(self) -> int:
        return self.position.epoch

    # -- data ------------------------------------------------------------------------------
    def use_data(self, data: Split) -> None:
        """Train on data the caller brings (an embedded trainer's own data; one rank only)."""
        if self.world_size > 1:
            raise TrainerError("a multi-rank node loads its shard on every rank: use use_shard")
        self.data, self.shard = data, None

    def use_shard(self, index: int, count: int) -> None:
        """Train on shard ``index`` of ``count`` of the task's data (loaded on every rank)."""
        with self._lock:
            self.channel.lead(Command.SHARD, index, count)
            self._use_shard(index, count)

    def _use_shard(self, index: int, count: int) -> None:
        shard = Shard(index, count, self.data_path)
        if shard != self.shard:
            self.data, self.shard = self.task.load_shard(shard), shard

    # -- state ------------------------------------------------------------------------------
    def _trainable(self) -> list[nn.Parameter]:
        """The parameters the optimizer steps (a fine-tuning task freezes its base model)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def global_state(self) -> StateDict:
        """The exchanged state's full (unsharded) tensors on CPU as plain tensors (on rank 0; {} elsewhere).

        With a task that exchanges part of its model (adapters) only that part is gathered."""
        if self.task.exchanges_whole_state:
            state = get_model_state_dict(self.model, options=_FULL)
            return {k: _plain(v) for k, v in state.items()}
        own = self.model.state_dict()  # sharded DTensors: nothing is gathered for the frozen base
        state = {k: _plain(own[name]) for k, name in self.exchanged.items()}  # a collective per tensor, same order
        return state if self.rank == 0 else {}

    def check_matches(self, state: StateDict) -> None:
        """Raise ``TrainerError`` naming what differs if ``state`` does not fit this node's model."""
        problems = state_mismatch({k: torch.empty(s, device="meta") for k, s in self.shapes.items()}, state)
        if problems:
            raise TrainerError("this node's model does not match the job's global model:\n  "
                               + "\n  ".join(problems[:20]))

    def load_global(self, state: StateDict) -> None:
        """Load the full global state; on several ranks rank 0 holds it and broadcasts it."""
        whole = self.task.exchanges_whole_state
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=self.world_size > 1, strict=whole)
        if self.rank == 0:  # set_model_state_dict replaces the dict's values with DTensors: give it a copy
            state = dict(state) if whole else {self.exchanged[k]: v for k, v in state.items()}
        set_model_state_dict(self.model, state if self.rank == 0 else {}, options=options)

    def train(self, start: StateDict | None, work: LocalWork, *,
              round_key: RoundKey | None = None) -> tuple[StateDict, TrainMetrics]:
        """Run one round's local work from ``start``; return (delta, metrics). ``start`` is read on rank 0.

        ``start=None`` trains on from the current weights (optimizer state kept) and returns the
        progress (end minus those weights). ``round_key`` names the round; it is required, and only
        used, with ``reproducible_rounds`` (which never trains on from its own weights)."""
        if self.data is None:
            raise TrainerError("no training data: call use_shard or use_data first")
        if start is None:
            if self.training.reproducible_rounds:
                raise TrainerError("a reproducible round starts from the announced global state, not start=None")
            with self._lock:
                self.channel.lead(Command.TRAIN_ON, work.epochs, work.steps)
                return self._train(None, work, None)
        self.check_matches(start)  # before the other ranks are told: a refusal must not strand them
        plan = self._plan(work, round_key)
        with self._lock:
            self.channel.lead(Command.TRAIN, work.epochs, work.steps, *(
                (plan.start_step, plan.order_seed) if plan else ()))
            return self._train(start, work, plan)

    def steps_per_round(self, work: LocalWork) -> int:
        """Optimizer steps one reproducible round of ``work`` takes on the current data."""
        if work.steps:
            return work.steps
        micro = batches_per_epoch(len(self.data), self.task.batch_size(self.training.batch_size), drop_last=True)
        return work.epochs * -(-micro // self.training.gradient_accumulation)

    def _plan(self, work: LocalWork, key: RoundKey | None) -> _RoundPlan | None:
        if not self.training.reproducible_rounds:
            return None
        if key is None:
            raise TrainerError("training.reproducible_rounds is on: LocalEngine.train needs round_key=RoundKey(...)")
        if key.round < 1 or key.shard < 0:
            raise TrainerError(f"bad round key {key}: rounds count from 1, shards from 0")
        return _RoundPlan(key.order_seed(self.training.seed), (key.round - 1) * self.steps_per_round(work))

    def _train(self, start: StateDict | None, work: LocalWork,
               plan: _RoundPlan | None) -> tuple[StateDict, TrainMetrics]:
        clock = time.perf_counter()
        if start is None:  # train on from the current weights (a collective gather on every rank)
            start = self.global_state()
        else:
            self.load_global(start)
        self._synchronize()
        load_seconds = time.perf_counter() - clock
        self.model.train()
        if plan is not None:  # nothing of earlier rounds carries over
            self.optimizer = build_optimizer(self._trainable(), self.training, self.device)
        anchor = [p.detach().clone() for p in self.model.parameters()] if self.proximal_mu > 0 else None
        metrics = self._run(work, plan, anchor)
        clock = time.perf_counter()
        end = self.global_state()
        delta = {k: end[k] - start[k].to(end[k].dtype) for k in end} if self.rank == 0 else {}
        return delta, dataclasses.replace(metrics, load_seconds=load_seconds,
                                          gather_seconds=time.perf_counter() - clock)

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _proximal(self, anchor: list[torch.Tensor]) -> None:
        """Add FedProx's μ·(w − w_global) to each (local shard of a) gradient."""
        for p, a in zip(self.model.parameters(), anchor):
            pull = (p.detach() - a).mul_(self.proximal_mu)
            if p.grad is None:
                p.grad = pull
            else:
                p.grad.add_(pull)

    def _run(self, work: LocalWork, plan: _RoundPlan | None = None,
             anchor: list[torch.Tensor] | None = None) -> TrainMetrics:
        cfg = self.training
        accumulation = cfg.gradient_accumulation
        before = self.position
        if plan is not None:  # the round's own order from its start, the schedule where the round is
            seed, position, drop_last = plan.order_seed, DataPosition(), True
            self.steps_done = plan.start_step
        else:
            # Step-counted work (the language-model way) drops an epoch's short last batch, so every step
            # sees a full batch and one rank computes what N ranks do.
            seed, position, drop_last = cfg.seed, self.position, work.steps > 0
        stop_epoch = position.epoch + work.epochs
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        micro, samples, steps = 0, 0, 0
        batch_size = self.task.batch_size(cfg.batch_size)
        batches = global_batches(len(self.data), batch_size, seed, position, self.world_size, drop_last=drop_last)
        self._synchronize()
        t0 = time.perf_counter()
        pending = 0  # micro-batches accumulated toward the next optimizer step
        while not (work.steps and steps >= work.steps):
            batch = next(batches)
            if not work.steps and batch.epoch >= stop_epoch:
                break
            if pending == 0:
                for group in self.optimizer.param_groups:
                    group["lr"] = learning_rate(cfg, self.steps_done)
            mine = rank_slice(batch.index, self.rank, self.world_size)
            x = self.data.x[mine].to(self.device, non_blocking=True)
            y = self.data.y[mine].to(self.device, non_blocking=True)
            pending += 1
            last_micro = pending == accumulation or (not work.steps and batch.last)
            if self.world_size > 1:
                self.model.set_requires_gradient_sync(last_micro)  # reduce once per step, not per micro-batch
            loss = self.task.loss(self.model, x, y)
            (loss / accumulation).backward()
            loss_sum += loss.detach()
            micro += 1
            samples += len(batch.index)
            position = batch.next_position
            if last_micro:
                if pending < accumulation:  # an epoch's short last group: scale its gradient up to a mean
                    for p in self.model.parameters():
                        if p.grad is not None:
                            p.grad.mul_(accumulation / pending)
                if anchor is not None:
                    self._proximal(anchor)
                if cfg.gradient_clipping > 0:
                    torch.nn.utils.clip_grad_norm_(self._trainable(), cfg.gradient_clipping)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.steps_done += 1
                steps += 1
                pending = 0
        self.position = position if plan is None else _add_epochs(
            before, position, batches_per_epoch(len(self.data), batch_size, self.world_size, drop_last=True))
        totals = torch.stack([loss_sum, torch.tensor(float(micro), device=self.device, dtype=torch.float64)])
        if self.world_size > 1:
            dist.all_reduce(totals)
        self._synchronize()
        seconds = max(time.perf_counter() - t0, 1e-9)
        loss_total, micro_total = totals.tolist()
        tokens = samples * self.task.tokens_per_sample()
        return TrainMetrics(loss_total / max(micro_total, 1.0), samples / seconds, tokens / seconds,
                            samples, steps, seconds)

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Model, optimizer, schedule step and data position (full tensors on rank 0)."""
        with self._lock:
            self.channel.lead(Command.STATE)
            return self._state_dict()

    def _state_dict(self) -> dict:
        return {
            "model": self.global_state(),
            "optimizer": get_optimizer_state_dict(self.model, self.optimizer, options=_FULL),
            "position": self.position.as_list(),
            "steps_done": self.steps_done,
        }

    def load_state_dict(self, state: dict) -> None:
        self.check_matches(state["model"])
        with self._lock:
            position = DataPosition.from_list(state["position"])
            self.channel.lead(Command.LOAD, position.epoch, position.batch, int(state["steps_done"]))
            self._load_state_dict(state if self.rank == 0 else None, position, int(state["steps_done"]))

    def _load_state_dict(self, state: dict | None, position: DataPosition, steps_done: int) -> None:
        self.load_global(state["model"] if state else {})
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=self.world_size > 1)
        set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"] if state else {}, options=options)
        self.position, self.steps_done = position, steps_done

    def follow(self) -> None:
        """A rank above 0: take part in whatever rank 0 leads, until it says stop."""
        log.info("rank %d of %d following rank 0", self.rank, self.world_size)
        while True:
            command, args = self.channel.receive()
            if command is Command.SHARD:
                self._use_shard(args[0], args[1])
            elif command is Command.TRAIN:
                plan = _RoundPlan(order_seed=args[3], start_step=args[2]) if self.training.reproducible_rounds else None
                self._train({}, LocalWork(epochs=args[0], steps=args[1]), plan)
            elif command is Command.TRAIN_ON:
                self._train(None, LocalWork(epochs=args[0], steps=args[1]), None)
            elif command is Command.STATE:
                self._state_dict()
            elif command is Command.LOAD:
                self._load_state_dict(None, DataPosition(args[0], args[1]), args[2])
            elif command is Command.STOP:
                log.info("rank %d: rank 0 says stop", self.rank)
                dist.barrier()  # leave together: no rank tears its group down under another's feet
                return

    def close(self) -> None:
        """Release the other ranks (they return from ``follow``); idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                if self.world_size > 1:
                    self.channel.lead(Command.STOP)
                    dist.barrier()
