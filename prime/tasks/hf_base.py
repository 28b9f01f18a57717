"""The frozen base model of a fine-tuning job: a ``transformers`` causal LM and the digest that pins it.

Two sources, nothing fetched from a hub: a local directory (``config.json`` plus safetensors
weights, loaded with ``from_pretrained(path, local_files_only=True)``; pickled ``.bin`` weights
are refused), or a built-in Llama config (``PRESETS``) whose weights are drawn from a seed, so
every participant builds the same model without a file. Either way the base never travels:
each participant builds its own and checks its digest, SHA-256 over every tensor's name,
dtype, shape and bytes in name order, against the one the job pins (``base_digest``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prime.core.errors import TaskError

#: Built-in Llama configs (byte-level, vocab 256, except ``llama-1b``'s 32k vocab for a real
#: embedding cost). ``tiny-llama`` trains on a laptop CPU in seconds; ``llama-1b`` (1.1B
#: parameters) is the H200 benchmark.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny-llama": dict(vocab_size=256, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024),
    "small-llama": dict(vocab_size=256, hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024),
    "llama-1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096),
}
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def preset_config(name: str, seq_len: int = 0):
    from transformers import LlamaConfig

    kwargs = dict(PRESETS[name])
    if seq_len > kwargs["max_position_embeddings"]:
        kwargs["max_position_embeddings"] = seq_len
    # No special tokens: the byte-level data has none, and ids must stay inside the vocab.
    return LlamaConfig(**kwargs, bos_token_id=None, eos_token_id=None, pad_token_id=None, tie_word_embeddings=False,
                       use_cache=False)


def build_preset(name: str, seed: int, seq_len: int = 0) -> nn.Module:
    """A Llama from a built-in config, weights drawn with ``seed`` (the global RNG is left untouched)."""
    from transformers import LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(preset_config(name, seq_len)).float()


def check_directory(path: Path) -> None:
    """A base model directory must hold ``config.json`` and safetensors weights; say which file is missing."""
    if not path.is_dir():
        raise TaskError(f"base model directory {path} does not exist (task.options.base_path)")
    if not (path / "config.json").is_file():
        raise TaskError(f"base model directory {path} has no config.json (save the model with save_pretrained)")
    index = path / WEIGHTS_INDEX
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TaskError(f"{index}: not a readable safetensors index: {exc}") from None
        for shard in shards:
            if not (path / shard).is_file():
                raise TaskError(f"base model directory {path} is missing {shard} (listed in {WEIGHTS_INDEX})")
    elif not (path / WEIGHTS).is_file():
        bin_files = [p.name for p in path.glob("*.bin")]
        hint = f" ({', '.join(bin_files)}: torch's pickle format, never loaded; convert it to safetensors)" if bin_files else ""
        raise TaskError(f"base model directory {path} has no {WEIGHTS} or {WEIGHTS_INDEX}{hint}")


def load_directory(path: Path) -> nn.Module:
    """The causal LM saved in ``path``, in fp32, never fetched from a hub."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    check_directory(path)
    hf_logging.disable_progress_bar()  # logs, not terminal bars
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, KeyError) as exc:
        raise TaskError(f"cannot load the base model in {path}: {type(exc).__name__}: {exc}") from None
    model.config.use_cache = False
    return model.float()


def has_tokenizer(path: Path) -> bool:
    return any((path / name).is_file() for name in TOKENIZER_FILES)


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over every entry of ``model.state_dict()``: name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256(b"prime/base-weights/v1\0")
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}\0{str(t.dtype).removeprefix('torch.')}\0{list(t.shape)}\0".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def check_digest(model: nn.Module, pinned: str, where: str) -> str:
    """The base's digest (computed only when the job pins one: hashing a 1B model takes seconds); a
    ``TaskError`` naming both digests when it is not the one the job pins."""
    if not pinned:
        return ""
    digest = weights_digest(model)
    if digest != pinned:
        raise TaskError(f"the base model ({where}) has digest {digest}, but the job pins task.options.base_digest = "
                        f"{pinned}: this participant's base model differs from the job's; refusing to train on it")
    return digest
