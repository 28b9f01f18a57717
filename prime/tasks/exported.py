"""A trained model on disk: ``NAME.safetensors`` plus a ``NAME.json`` card beside it.

The card names the task and its options (everything needed to build the module again),
the round and model version it came from, its held-out metrics, the weights' SHA-256, and
the digest of the job's agreed terms. ``load_model(path)`` reads both and returns a ready
``nn.Module`` in eval mode; a card whose digest does not match the weights is refused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from torch import nn

from prime.atomic import write_atomic
from prime.core import tensors
from prime.core.errors import DecodeError, TaskError
from prime.tasks.registry import resolve_task

#: Largest weights file ``load_model`` reads (the network's own cap is per job; files are trusted more).
MAX_WEIGHTS_BYTES = 1 << 40


#: The weights file in an exported directory (``prime registry export --format dir``); its card is
#: ``prime_model.json``. Not ``model.safetensors``: a transformers export keeps its own weights there.
DIR_WEIGHTS = "prime_model.safetensors"


def card_path(weights: str | Path) -> Path:
    return Path(weights).with_suffix(".json")


def write_model(path: str | Path, state: dict, card: dict[str, Any]) -> dict[str, Any]:
    """Write ``state`` as safetensors at ``path`` and its card beside it (both atomically); return the card."""
    path = Path(path)
    data = tensors.encode_state(state)
    card = {**card, "weights_sha256": hashlib.sha256(data).hexdigest(), "weights_file": path.name}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)
    write_atomic(card_path(path), (json.dumps(card, indent=2, sort_keys=True) + "\n").encode())
    return card


def read_card(path: str | Path) -> dict[str, Any]:
    card_file = card_path(path)
    try:
        card = json.loads(card_file.read_text())
    except FileNotFoundError:
        raise TaskError(f"{card_file}: no model card beside {path} (prime-coordinator export writes both)") from None
    except (OSError, ValueError) as exc:
        raise TaskError(f"{card_file}: not a readable model card: {exc}") from None
    if not isinstance(card, dict) or not isinstance(card.get("task"), str):
        raise TaskError(f"{card_file}: model card names no task")
    return card


def load_model(path: str | Path) -> nn.Module:
    """The exported model at ``path`` (a weights file, or a directory holding one), built from its task
    and loaded, in eval mode."""
    path = Path(path)
    if path.is_dir():
        path = path / DIR_WEIGHTS
    card = read_card(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TaskError(f"{path}: cannot read the weights: {exc.strerror}") from None
    if hashlib.sha256(data).hexdigest() != card.get("weights_sha256"):
        raise TaskError(f"{path}: weights do not match the SHA-256 in {card_path(path).name} (corrupt or replaced)")
    try:
        state = tensors.decode_state(bytearray(data), max_bytes=MAX_WEIGHTS_BYTES)
    except DecodeError as exc:
        raise TaskError(f"{path}: {exc}") from None
    task = resolve_task(card["task"], card.get("task_options") or {}, str(card_path(path)))
    model = task.build_model(int(card.get("seed", 0)))
    try:
        task.load_exchanged_state(model, state)  # all weights, or a fine-tuning task's adapters
    except (TaskError, RuntimeError) as exc:
        raise TaskError(f"{path}: weights do not fit task {task.name!r}: {exc}") from None
    return model.eval()
