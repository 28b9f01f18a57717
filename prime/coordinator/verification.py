"""Update verification: nothing from a trainer is used before every check passes.

Two stages. ``check_record`` is cheap and runs on the signed record alone
(signature already verified by the envelope): admission, job, round, model version,
selection, assigned shard, codec, duplicates. ``check_tensors`` runs on the decoded blob: names, shapes,
dtypes must match the global model, values must be finite and the L2 norm bounded. Each refusal is an
``UpdateRejected`` with a short reason code that lands in the database.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from prime.core.config import JobConfig
from prime.core.errors import UpdateRejected
from prime.core.records import RoundAnnouncement, UpdateRecord, freshness_error
from prime.core.refusals import Refusal


def check_record(
    record: UpdateRecord, signer: bytes, config: JobConfig, announcement: RoundAnnouncement | None, now: float
) -> None:
    security = config.security
    if not config.admission.admits(signer):
        raise UpdateRejected(Refusal.UNKNOWN_KEY, "signer is not an admitted trainer")
    stale = freshness_error(record.issued, record.expires, now,
                            max_skew=security.max_clock_skew, max_ttl=security.record_ttl)
    if stale:
        raise UpdateRejected(stale, f"issued {record.issued:.0f}, expires {record.expires:.0f}, now {now:.0f}")
    if record.job_id != config.job_id:
        raise UpdateRejected(Refusal.WRONG_JOB, f"record is for job {record.job_id!r}")
    if record.codec != config.compression.update.name:
        raise UpdateRejected(Refusal.WRONG_CODEC, f"update encoded {record.codec!r}, the job uses "
                             f"{config.compression.update.name!r} (compression.update)")
    if announcement is None or record.round != announcement.round:
        current = announcement.round if announcement else "none"
        raise UpdateRejected(Refusal.WRONG_ROUND, f"update for round {record.round}, current round is {current}")
    if record.term != announcement.term:
        raise UpdateRejected(Refusal.WRONG_TERM, f"update for term {record.term}, this coordinator leads term {announcement.term}")
    if record.model_version != announcement.model_version:
        raise UpdateRejected(
            "wrong_model_version", f"trained on v{record.model_version}, round uses v{announcement.model_version}"
        )
    if signer not in announcement.selected:
        raise UpdateRejected(Refusal.NOT_SELECTED, f"not selected for round {record.round}")
    assigned = announcement.shard_of(signer)
    if record.shard is not None and record.shard != assigned:
        raise UpdateRejected(Refusal.WRONG_SHARD, f"trained on shard {record.shard}, the round assigned shard {assigned}")
    if record.blob_size > config.network.max_message_size:
        raise UpdateRejected(Refusal.OVERSIZE, f"blob of {record.blob_size} bytes exceeds {config.network.max_message_size}")
    if record.num_samples <= 0:
        raise UpdateRejected(Refusal.NO_SAMPLES, "update claims zero samples")
    if record.num_samples > security.max_samples_per_update:
        raise UpdateRejected(
            "too_many_samples", f"claims {record.num_samples} samples, cap is {security.max_samples_per_update}"
        )
    memory = config.budget.memory_bytes_per_trainer
    if memory and (record.peak_memory_bytes is None or record.peak_memory_bytes > memory):
        peak = "does not report its peak memory" if record.peak_memory_bytes is None else \
            f"peaked at {record.peak_memory_bytes} bytes"
        raise UpdateRejected(Refusal.OVER_MEMORY_BUDGET, f"trainer {peak}; budget.memory_bytes_per_trainer is {memory}")


def check_tensors(delta: Mapping[str, torch.Tensor], reference: dict[str, torch.Tensor], max_norm: float = 0.0) -> None:
    """One pass over ``delta``'s tensors (an encoded update decodes each once, then drops it)."""
    if set(delta) != set(reference):
        missing, extra = sorted(set(reference) - set(delta)), sorted(set(delta) - set(reference))
        raise UpdateRejected(Refusal.WRONG_TENSORS, f"missing {missing[:3]}, unexpected {extra[:3]}")
    squares = 0.0
    for name, ref in reference.items():
        value = delta[name]
        if value.shape != ref.shape:
            raise UpdateRejected(Refusal.WRONG_SHAPE, f"{name}: {tuple(value.shape)} != {tuple(ref.shape)}")
        if value.dtype != ref.dtype:
            raise UpdateRejected(Refusal.WRONG_DTYPE, f"{name}: {value.dtype} != {ref.dtype}")
        if not bool(torch.isfinite(value).all()):
            raise UpdateRejected(Refusal.NOT_FINITE, f"{name} has NaN or Inf")
        if max_norm > 0:
            squares += float(value.to(torch.float64).pow(2).sum())
    if max_norm > 0:
        norm = math.sqrt(squares)
        if norm > max_norm:
            raise UpdateRejected(Refusal.NORM_TOO_LARGE, f"L2 norm {norm:.4g} exceeds the bound {max_norm:.4g}")
