"""Spot checks: recompute a sampled trainer's round and compare it with the update it sent.

With ``training.reproducible_rounds`` a round is a pure function of public inputs (the
global model, the job's config, the round number and the shard: ``prime/trainer/engine.py``),
so when every participant can read every shard (``TaskSpec.public_data``) the coordinator can
train the round itself, on CPU, and measure how far the submitted delta lies from its own:
relative L2 distance ``‖recomputed − submitted‖ / ‖recomputed‖`` against
``verification.tolerance``. An honest update lands at float rounding (~1e-7 on one machine,
more across devices and kernels); a fabricated one (noise, zeros, a copy, a stale or
sign-flipped delta, honest work on another shard) lands near 1.

Which updates are checked is sampled at ``verification.spot_check_rate`` from SHA-256 of
(secret, job, round, signer): a restarted coordinator samples the same updates, and since
trainers do not know the coordinator's secret they cannot tell which rounds are checked
(without one they can compute it, and fabricate exactly the unchecked rounds).

A check the verifier cannot make is *inconclusive*, never a penalty: private data, a shard it
cannot load, bf16 training (its rounding differs by device and kernel), an update codec with
error feedback (``topk``: the trainer's residual is private), or any failure of the verifier's
own engine. ``Verdict.failed`` is the only outcome that blames the trainer.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from prime import codecs
from prime.core.aggregation.config import proximal_mu
from prime.core.config import JobConfig, Precision
from prime.core.errors import ConfigError, TaskError
from prime.tasks.spec import Task

if TYPE_CHECKING:  # the engine (FSDP2, DTensor, distributed checkpoint: ~1 s of imports) loads on the first check
    from prime.trainer.engine import LocalEngine

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]
#: Denominator floor of the relative distance (a recomputed delta of exactly zero).
TINY = 1e-12
_SAMPLE_DOMAIN = b"prime/spot-check/v1\0"


@dataclass(frozen=True)
class Verdict:
    """One spot check. ``passed``: within tolerance. ``inconclusive``: why no comparison was
    possible (then ``passed`` is False and ``distance`` NaN): never the trainer's fault.
    ``distance`` is infinite for an update that does not even fit the model."""

    passed: bool
    distance: float
    inconclusive: str | None
    seconds: float

    @property
    def failed(self) -> bool:
        """The trainer's update is not what its round computes: refuse it (``failed_spot_check``)."""
        return not self.passed and self.inconclusive is None

    @property
    def outcome(self) -> str:
        """``passed``, ``failed`` or ``inconclusive`` (for counters and logs)."""
        return "inconclusive" if self.inconclusive is not None else "passed" if self.passed else "failed"


def _unfit(reference: StateDict, submitted: StateDict) -> bool:
    """The submitted delta cannot be the round's: other names or shapes, or values not finite."""
    return set(reference) != set(submitted) or any(
        tuple(submitted[k].shape) != tuple(v.shape) or not bool(torch.isfinite(submitted[k]).all())
        for k, v in reference.items())


def relative_distance(recomputed: StateDict, submitted: StateDict) -> float:
    """``‖recomputed − submitted‖ / max(‖recomputed‖, TINY)`` over all tensors, in float64
    (infinite when the names or shapes differ or the submitted values are not finite)."""
    if set(recomputed) != set(submitted):
        return math.inf
    diff = norm = 0.0
    for name, mine in recomputed.items():
        theirs = submitted[name]
        if tuple(theirs.shape) != tuple(mine.shape):
            return math.inf
        mine64, theirs64 = mine.detach().to(torch.float64), theirs.detach().to("cpu", torch.float64)
        diff += float((mine64 - theirs64).pow(2).sum())
        norm += float(mine64.pow(2).sum())
    distance = math.sqrt(diff) / max(math.sqrt(norm), TINY)
    return distance if math.isfinite(distance) else math.inf


class SpotChecker:
    """Samples updates and recomputes their rounds; one CPU engine, reused, one check at a time.

    ``check`` is synchronous and takes as long as a trainer's round on CPU: call it off the
    event loop (``asyncio.to_thread``). ``rate`` overrides ``verification.spot_check_rate``
    (``prime verify --rate``)."""

    def __init__(self, config: JobConfig, task: Task, *, secret: bytes = b"", data_path: Path | None = None,
                 rate: float | None = None) -> None:
        self.config = config
        self.task = task
        self.secret = bytes(secret)
        self.data_path = data_path
        self.rate = config.verification.spot_check_rate if rate is None else float(rate)
        if not 0.0 <= self.rate <= 1.0:
            raise ConfigError(f"spot-check rate must lie in [0, 1], got {self.rate}")
        self.tolerance = config.verification.tolerance
        self.update_codec = codecs.from_config(config.compression.update)
        self._engine: LocalEngine | None = None
        self._lock = threading.Lock()

    # -- sampling -------------------------------------------------------------------------
    def sample_value(self, round_number: int, signer: bytes) -> float:
        """Uniform in [0, 1), a pure function of (secret, job, round, signer)."""
        h = hashlib.sha256(_SAMPLE_DOMAIN)
        h.update(len(self.secret).to_bytes(4, "big") + self.secret)
        h.update(self.config.job_id.encode() + b"\0" + round_number.to_bytes(8, "big", signed=True) + bytes(signer))
        return int.from_bytes(h.digest()[:8], "big") / 2.0**64

    def sampled(self, round_number: int, signer: bytes) -> bool:
        """Whether this round's update from ``signer`` is spot-checked (deterministic)."""
        return self.rate > 0 and self.sample_value(round_number, signer) < self.rate

    # -- checking -------------------------------------------------------------------------
    def unverifiable(self) -> str | None:
        """Why no round of this job can be recomputed here (None: they can)."""
        if not self.config.training.reproducible_rounds:
            return ("training.reproducible_rounds is off: a trainer's round depends on its own optimizer state "
                    "and data position")
        if not self.task.spec.public_data:
            return f"task {self.task.name!r} does not declare public_data: the verifier cannot read trainers' shards"
        if self.update_codec.error_feedback:
            return (f"compression.update is {self.update_codec.name} with error feedback: each update carries the "
                    "trainer's private residual of earlier rounds, which no verifier can recompute")
        if self.config.training.precision is Precision.BF16:
            return ("the job trains in bf16: bf16 rounding differs by device and kernel, so a recomputed round "
                    "does not match an honest one to any useful tolerance")
        return None

    def check(self, global_state: StateDict, delta: StateDict, shard: int, num_shards: int,
              round_number: int) -> Verdict:
        """Recompute round ``round_number`` on ``shard`` of ``num_shards`` from ``global_state`` (the
        model as trainers decoded it) and compare it with the submitted, decoded ``delta``; in a lossy
        update codec the recomputed delta goes through the same codec first."""
        started = time.perf_counter()

        def inconclusive(reason: str) -> Verdict:
            log.debug("round %d shard %d: spot check inconclusive: %s", round_number, shard, reason)
            return Verdict(False, math.nan, reason, time.perf_counter() - started)

        reason = self.unverifiable()
        if reason:
            return inconclusive(reason)
        with self._lock:
            try:
                engine = self._engine or self._build()
                engine.check_matches(global_state)  # the verifier's own model must fit before blaming anyone
            except Exception as exc:  # the verifier's own failure: never the trainer's
                self._engine = None
                return inconclusive(f"the verifier's engine failed: {type(exc).__name__}: {exc}")
            if _unfit(global_state, delta):  # no need to train to see it
                return Verdict(False, math.inf, None, time.perf_counter() - started)
            try:
                engine.use_shard(shard, num_shards)
            except TaskError as exc:
                return inconclusive(f"cannot load shard {shard} of {num_shards}: {exc}")
            except Exception as exc:
                self._engine = None
                return inconclusive(f"the verifier's engine failed: {type(exc).__name__}: {exc}")
            from prime.trainer.engine import LocalWork, RoundKey  # loaded with the engine by _build

            try:
                recomputed, _ = engine.train(global_state, LocalWork.of(self.config.federated),
                                             round_key=RoundKey(self.config.job_id, round_number, shard))
            except Exception as exc:
                self._engine = None  # a half-run round may leave gradients behind: start clean next time
                return inconclusive(f"the verifier's engine failed: {type(exc).__name__}: {exc}")
        if not self.update_codec.lossless:  # what an honest trainer's delta decodes to
            recomputed = codecs.roundtrip(self.update_codec, recomputed)
        distance = relative_distance(recomputed, delta)
        return Verdict(distance <= self.tolerance, distance, None, time.perf_counter() - started)

    def _build(self) -> LocalEngine:
        from prime.trainer.engine import LocalEngine

        self._engine = LocalEngine(self.task, self.config.training, device=torch.device("cpu"),
                                   data_path=self.data_path, proximal_mu=proximal_mu(self.config.federated.aggregation))
        return self._engine

    def close(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.close()
                self._engine = None
