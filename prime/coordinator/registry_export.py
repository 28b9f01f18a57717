"""``prime registry export``: a registry version out, as the format asks.

Every format starts from ``prime-coordinator export`` (``export.py``: the weights re-verified
against their digest, the JSON model card) and adds the version's registry record to the
card (stage, lineage, contributors, metadata, promotions), so a model file says where it
came from. Formats: ``safetensors`` (a weights file with its card beside it), ``dir`` (a
directory ``prime.load_model`` opens), ``transformers`` (a directory
``transformers.AutoModelForCausalLM.from_pretrained`` opens, for the stdlib-lm task),
``merged-lora`` (``--merge-lora``: a LoRA job's adapters merged into its base, a ``transformers``
directory). A format is a function ``(data_dir, entry, out) -> card`` in ``FORMATS``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prime.atomic import write_atomic
from prime.coordinator.registry import VersionEntry

#: The weights file in a directory export (``prime.tasks.exported.DIR_WEIGHTS``, without importing torch here).
DIR_WEIGHTS = "prime_model.safetensors"


def card_path(weights: Path) -> Path:
    return Path(weights).with_suffix(".json")


def _registry_card(entry: VersionEntry) -> dict[str, Any]:
    record = entry.as_dict()
    return {"stage": record["stage"], "parent": record["parent"], "contributors": record["contributors"],
            "strategy": record["strategy"], "metadata": record["metadata"], "promotions": record["promotions"]}


def _with_registry(weights: Path, entry: VersionEntry, card: dict[str, Any]) -> dict[str, Any]:
    """Rewrite the card beside ``weights`` with the registry record (the weights' SHA-256 stays valid)."""
    card = {**card, "registry": _registry_card(entry)}
    write_atomic(card_path(weights), (json.dumps(card, indent=2, sort_keys=True) + "\n").encode())
    return card


def export_safetensors(data_dir: Path, entry: VersionEntry, out: Path) -> dict[str, Any]:
    from prime.coordinator.export import export_version  # torch: only when exporting

    card = export_version(data_dir, str(entry.version), out)
    return {"weights": str(out), "card": str(card_path(out)), **_with_registry(out, entry, card)}


def export_dir(data_dir: Path, entry: VersionEntry, out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    return export_safetensors(data_dir, entry, out / DIR_WEIGHTS)


def export_transformers(data_dir: Path, entry: VersionEntry, out: Path) -> dict[str, Any]:
    from prime.tasks.hf_export import write_transformers_dir

    card = export_dir(data_dir, entry, out)  # prime's own weights and card, beside the transformers files
    write_transformers_dir(out, card)
    return {**card, "transformers_dir": str(out)}


def export_merged_lora(data_dir: Path, entry: VersionEntry, out: Path) -> dict[str, Any]:
    """A LoRA job's adapters merged into its base: a ``transformers`` model directory (``--merge-lora``)."""
    from prime.coordinator.export import export_merged
    from prime.tasks.lora_export import CARD

    card = {**export_merged(data_dir, str(entry.version), out), "registry": _registry_card(entry)}
    write_atomic(out / CARD, (json.dumps(card, indent=2, sort_keys=True) + "\n").encode())
    return {**card, "transformers_dir": str(out)}


FORMATS: dict[str, Callable[[Path, VersionEntry, Path], dict[str, Any]]] = {
    "safetensors": export_safetensors,
    "dir": export_dir,
    "transformers": export_transformers,
    "merged-lora": export_merged_lora,
}


def export(data_dir: Path, entry: VersionEntry, out: Path, fmt: str) -> dict[str, Any]:
    return FORMATS[fmt](Path(data_dir), entry, Path(out))
