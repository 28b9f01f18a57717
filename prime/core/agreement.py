"""What every participant of a job must agree on, and its digest.

The coordinator signs the digest of these terms into every round announcement; a trainer
whose own config gives another digest refuses the round and says which keys differ,
instead of training something the coordinator cannot use. The terms are what shapes the
update: the task and its (validated) options, the data split, the training recipe,
the local work per round and the codecs (``[compression]``). Network addresses, timeouts,
fault tolerance and admission are per node or the coordinator's alone, so they may differ.

The canonical form (sorted-key compact JSON) is also served as a blob whose digest is the
same, so a trainer can fetch the coordinator's terms and name the differing keys.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from prime.core.config import JobConfig

#: Federated keys that shape a trainer's update (the rest are the coordinator's business).
_FEDERATED_TERMS = ("local_epochs", "local_steps", "overlap", "aggregation")


def job_terms(config: JobConfig, task_options: dict[str, Any]) -> dict[str, Any]:
    """The agreed terms of ``config``, with the task's options as validated (defaults filled in)."""
    dump = config.model_dump(mode="json")
    return {
        "job_id": config.job_id,
        "task": {"name": config.task.name, "options": task_options},
        "data": dump["data"],
        "training": dump["training"],
        "federated": {k: dump["federated"][k] for k in _FEDERATED_TERMS},
        "compression": dump["compression"],  # the codecs shape what is sent both ways
    }


def canonical(terms: dict[str, Any]) -> bytes:
    return json.dumps(terms, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def terms_digest(terms: dict[str, Any]) -> str:
    """SHA-256 hex of the canonical terms: equal digests mean equal terms."""
    return hashlib.sha256(canonical(terms)).hexdigest()


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def differences(mine: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """One line per differing key: ``training.learning_rate: here 0.05, coordinator 0.1``."""
    a, b = _flatten(mine), _flatten(theirs)
    missing = object()
    lines = []
    for key in sorted(set(a) | set(b)):
        here, there = a.get(key, missing), b.get(key, missing)
        if here != there:
            show = lambda v: "(not set)" if v is missing else json.dumps(v)  # noqa: E731
            lines.append(f"{key}: here {show(here)}, coordinator {show(there)}")
    return lines
