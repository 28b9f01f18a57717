"""``prime-coordinator export``: a committed model version out of a coordinator's data dir.

Reads the database read-only and the model blob re-verified against its digest, so it is
safe while the daemon runs; writes safetensors plus the JSON card ``prime.load_model`` reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prime import __version__
from prime.coordinator.status import open_read_only
from prime.core import tensors
from prime.core.errors import CoordinatorError, PrimeError
from prime.blobs.store import BlobStore
from prime.observability.progress import steps
from prime.tasks.exported import MAX_WEIGHTS_BYTES, write_model


def export_version(data_dir: str | Path, version: str, out: str | Path) -> dict[str, Any]:
    """Write model ``version`` (a number or ``latest``) to ``out``; return the card written beside it."""
    return _export(data_dir, version, out, write_model, "exporting")


def export_merged(data_dir: str | Path, version: str, out: str | Path) -> dict[str, Any]:
    """``--merge-lora``: model ``version``'s adapters merged into the task's base model, written as a
    ``transformers`` model directory at ``out``; return the card written in it."""
    from prime.tasks.lora_export import write_merged

    return _export(data_dir, version, out, write_merged, "merging and exporting")


def _export(data_dir: str | Path, version: str, out: str | Path, write, doing: str) -> dict[str, Any]:
    with steps(f"{doing} model {version}", 2) as advance:  # read, verify and decode; write: each can be long
        state, card = read_version(data_dir, version)
        advance()
        card = write(out, state, card)
        advance()
    return card


def read_version(data_dir: str | Path, version: str) -> tuple[dict, dict[str, Any]]:
    """Model ``version``'s committed (exchanged) state, and its card."""
    data_dir = Path(data_dir)
    path, db = open_read_only(data_dir)
    try:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        if version == "latest":
            row = db.execute("SELECT version, digest, round, config_digest FROM model_versions "
                             "ORDER BY version DESC LIMIT 1").fetchone()
        elif version.isdigit():
            row = db.execute("SELECT version, digest, round, config_digest FROM model_versions WHERE version=?",
                             (int(version),)).fetchone()
        else:
            raise CoordinatorError(f"--version must be a number or 'latest', not {version!r}")
        if row is None:
            latest = db.execute("SELECT MAX(version) FROM model_versions").fetchone()[0]
            raise CoordinatorError(f"no model version {version} in {path} (latest is v{latest})")
        number, digest, round_number, config_digest = row
        metrics_row = db.execute("SELECT metrics FROM rounds WHERE model_version=?", (number,)).fetchone()
    finally:
        db.close()
    if "task" not in meta:
        raise CoordinatorError(f"{path} records no task (written by an older prime); cannot build a model card")
    store = BlobStore(data_dir / "blobs")
    blob = store.read_bytes(digest)  # re-verified against its digest
    state = tensors.decode_state(bytearray(blob), max_bytes=MAX_WEIGHTS_BYTES)
    card = {
        "job_id": meta.get("job_id"),
        "task": meta["task"],
        "task_options": json.loads(meta.get("task_options", "{}")),
        "model_version": number,
        "round": round_number,
        "metrics": json.loads(metrics_row[0]) if metrics_row and metrics_row[0] else {},
        "model_digest": digest,
        "config_digest": config_digest,
        "coordinator_key": meta.get("coordinator_key"),
        "prime_version": __version__,
    }
    seed = _training_seed(store, config_digest)
    if seed is not None:  # what build_model drew the weights that are not exchanged from (LoRA's frozen A)
        card["seed"] = seed
    return state, card


def _training_seed(store: BlobStore, config_digest: str | None) -> int | None:
    """``training.seed`` of the job's agreed terms (a blob named by their digest), if stored here."""
    try:
        terms = json.loads(store.read_bytes(config_digest)) if config_digest else None
        return int(terms["training"]["seed"])
    except (PrimeError, OSError, ValueError, KeyError, TypeError):
        return None
