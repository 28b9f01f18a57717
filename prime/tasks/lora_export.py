"""Merged export of a LoRA job: adapters folded into the base, saved as a ``transformers`` model directory.

``write_merged`` builds the job's model (the pinned base plus peft adapters), loads the committed
adapters, ``merge_and_unload``s them (W + (alpha/r)·B·A per adapted layer) and writes
``save_pretrained`` safetensors, the tokenizer (the base directory's own, or for a byte-level
model a ``tokenizer.json`` whose ids are the byte values) and ``prime_card.json`` (job, round,
metrics, digests). ``AutoModelForCausalLM.from_pretrained(out)`` and
``AutoTokenizer.from_pretrained(out)`` then load it with no prime installed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from prime.atomic import write_atomic
from prime.core.errors import TaskError
from prime.tasks import hf_base
from prime.tasks.hf_lora import NAME, load_base
from prime.tasks.registry import resolve_task

CARD = "prime_card.json"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of the 256 byte values to printable characters (what ByteLevel uses)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def byte_tokenizer():
    """A fast tokenizer whose ids are byte values 0..255 (GPT-2's byte-to-character map, no merges)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {char: byte for byte, char in bytes_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def write_merged(out: str | Path, state: dict, card: dict[str, Any]) -> dict[str, Any]:
    """Merge ``state`` (the committed adapters) into the job's base and write a model directory at ``out``."""
    if card.get("task") != NAME:
        raise TaskError(f"--merge-lora exports {NAME} jobs; this one trains {card.get('task')!r}")
    task = resolve_task(NAME, card.get("task_options") or {}, "the coordinator's recorded task options")
    model = task.build_model(int(card.get("seed", 0)))
    task.load_exchanged_state(model, state)
    merged = model.merge_and_unload()
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise TaskError(f"{out} exists and is not empty: choose a new directory for the merged model")
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        card = _write(staging, merged, task, card)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()
    staging.rename(out)
    return card


def _write(staging: Path, merged, task, card: dict[str, Any]) -> dict[str, Any]:
    merged.save_pretrained(str(staging), safe_serialization=True)
    base = Path(task.options.base_path) if task.options.base_path else None
    if base is not None and hf_base.has_tokenizer(base):
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(base), local_files_only=True).save_pretrained(str(staging))
        tokenizer = "the base model's"
    else:
        byte_tokenizer().save_pretrained(str(staging))
        tokenizer = "byte-level (ids are byte values)"
    card = {**card, "merged_lora": True, "tokenizer": tokenizer,
            "base_digest": task.options.base_digest or hf_base.weights_digest(load_base(task.options)[0])}
    write_atomic(staging / CARD, (json.dumps(card, indent=2, sort_keys=True) + "\n").encode())
    return card
