"""``hf-causal-lm-lora``: federated LoRA fine-tuning of a ``transformers`` causal LM; only adapters move.

The base model (``hf_base``: a local directory, or a built-in Llama config drawn from a seed)
is frozen and pinned by digest; ``peft`` wraps it with LoRA adapters (``r``, ``lora_alpha``,
``target_modules``, ``lora_dropout``, ``bias``). The exchanged state (``TaskSpec.exchanged_state``)
is ``peft.get_peft_model_state_dict``'s: trainers send adapter deltas, the coordinator verifies,
scores, aggregates and commits adapter versions, and the base is never on the wire.

Aggregation is the job's strategy over the adapter tensors (FedAvg: the mean of each A and each
B). That is not the mean of the products: mean(B_i)·mean(A_i) ≠ mean(B_i·A_i) when the A_i
differ. ``freeze_a`` is FFA-LoRA (Sun et al., 2024): A stays at its seeded random init on every
participant and only B is trained and exchanged, so mean(B_i)·A = mean(B_i·A) exactly, at half
the bytes, with the same rank.

Data (``text_data``): local ``.txt`` / ``{"text": …}`` JSON-lines files, or standard-library
modules, split by document into held-out and trainer shards; tokenized with the base
directory's tokenizer, or byte-level (vocab 256) for config-built models.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from prime.core.datasets import Split
from prime.core.errors import ConfigError, TaskError
from prime.tasks import hf_base, text_data
from prime.tasks.spec import Shard, StateDict, TaskOptions, TaskSpec

NAME = "hf-causal-lm-lora"
#: The demo's and the end-to-end test's options: a config-built tiny Llama, adapters on every
#: projection and the output head, fine-tuned on the standard library's ``email`` package.
DEMO_OPTIONS = {
    "base_preset": "tiny-llama", "r": 8, "lora_alpha": 16.0, "stdlib_modules": ["email"], "seq_len": 128,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"],
    "validation_sequences": 64,
}


class LoraOptions(TaskOptions):
    """``[task.options]`` of ``hf-causal-lm-lora``."""

    #: A local directory saved with ``save_pretrained`` (config.json, safetensors, tokenizer files) …
    base_path: str = ""
    #: … or a built-in Llama config, its weights drawn from ``base_seed`` (byte-level vocab).
    base_preset: Literal["tiny-llama", "small-llama", "llama-1b"] | None = None
    base_seed: int = 0
    #: SHA-256 of the base weights (``hf_base.weights_digest``); every participant checks its own
    #: base against it. Required with ``base_path``; empty for a preset means unpinned.
    base_digest: str = Field("", pattern=r"^([0-9a-f]{64})?$")
    r: int = Field(8, ge=1, le=1024)
    lora_alpha: float = Field(16.0, gt=0)
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    bias: Literal["none", "all", "lora_only"] = "none"
    #: FFA-LoRA: A frozen at its seeded init (the same on every participant), only B trained and sent.
    freeze_a: bool = False
    #: Training text: .txt / .jsonl files or directories of them (a trainer's --data-path replaces them) …
    data_files: tuple[str, ...] = ()
    #: … and/or the .py files of these top-level standard-library modules.
    stdlib_modules: tuple[str, ...] = ()
    held_out_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    seq_len: int = Field(128, ge=8)
    #: Most held-out sequences the coordinator evaluates (evenly spaced), bounding its cost.
    validation_sequences: int = Field(256, ge=1)
    validation_batch_size: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _check(self) -> "LoraOptions":
        if bool(self.base_path) == (self.base_preset is not None):
            raise ValueError("name the base model: exactly one of base_path (a local directory) or base_preset")
        if not self.target_modules:
            raise ValueError("target_modules is empty: name the modules to adapt (e.g. q_proj, v_proj)")
        return self


def load_base(options: LoraOptions) -> tuple[nn.Module, str]:
    """(the frozen base model, its digest if pinned, else ""), the digest checked against the pinned one."""
    if options.base_preset is not None:
        model = hf_base.build_preset(options.base_preset, options.base_seed, options.seq_len)
        where = f"preset {options.base_preset!r}, seed {options.base_seed}"
    else:
        path = Path(options.base_path)
        model = hf_base.load_directory(path)
        where = str(path)
        if not options.base_digest:
            raise TaskError(f"task.options.base_digest is not set: pin the base model; the one in {path} has digest "
                            f"{hf_base.weights_digest(model)}")
    return model, hf_base.check_digest(model, options.base_digest, where)


def check_targets(model: nn.Module, targets: tuple[str, ...]) -> None:
    """Every ``target_modules`` entry must match a module (by name or name suffix, as peft does)."""
    names = [name for name, _ in model.named_modules() if name]
    unmatched = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if unmatched:
        leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if n and not list(m.children())})
        raise ConfigError(f"key 'task.options.target_modules': {unmatched} match no module of the base model; its "
                          f"module names are {leaves} (full names like {names[-1]!r})")


def build_model(options: LoraOptions, seed: int) -> nn.Module:
    """The base (pinned, frozen) wrapped by peft; the adapters' init comes from the global RNG,
    which ``Task.build_model`` seeds with ``seed``, so A is the same on every participant."""
    from peft import LoraConfig, get_peft_model

    base, _ = load_base(options)
    check_targets(base, options.target_modules)
    config = LoraConfig(r=options.r, lora_alpha=options.lora_alpha, target_modules=list(options.target_modules),
                        lora_dropout=options.lora_dropout, bias=options.bias, task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_peft_model(base, config)
    if options.freeze_a:
        for name, p in model.named_parameters():
            if ".lora_A." in name:
                p.requires_grad_(False)
    return model


def exchanged_state(options: LoraOptions, model: nn.Module, state: StateDict) -> StateDict:
    """The adapters, named as peft saves them (``…q_proj.lora_A.weight``); with ``freeze_a``, B only."""
    from peft import get_peft_model_state_dict

    picked = get_peft_model_state_dict(model, state_dict=state, save_embedding_layers=False)
    if options.freeze_a:
        picked = {k: v for k, v in picked.items() if ".lora_A." not in k}
    return picked


# -- data ----------------------------------------------------------------------------------
def _base_dir(options: LoraOptions) -> Path | None:
    return Path(options.base_path) if options.base_path else None


@functools.lru_cache(maxsize=4)
def _tokenizer(base_path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(base_path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise TaskError(f"cannot load the tokenizer in {base_path}: {exc}") from None


def _encoding(options: LoraOptions):
    """(tokenize, separator tokens): the base directory's tokenizer, else bytes joined by a blank line."""
    path = _base_dir(options)
    if path is not None and hf_base.has_tokenizer(path):
        tok = _tokenizer(str(path))
        separator = [tok.eos_token_id] if tok.eos_token_id is not None else tok.encode("\n\n", add_special_tokens=False)
        return (lambda text: tok.encode(text.decode("utf-8"), add_special_tokens=False)), separator
    return text_data.byte_tokens, list(b"\n\n")


def _documents(options: LoraOptions, data_path: Path | None) -> list[text_data.Document]:
    files = [data_path] if data_path is not None else list(options.data_files)
    documents = text_data.file_documents(files) if files else []
    if options.stdlib_modules:
        documents += text_data.stdlib_documents(options.stdlib_modules)
    if not documents:
        raise TaskError("no training text: set task.options.data_files or stdlib_modules, or pass --data-path")
    return documents


def _tokens(options: LoraOptions, documents: list[text_data.Document]) -> Split:
    tokenize, separator = _encoding(options)
    return text_data.windows(text_data.token_stream(documents, tokenize, separator), options.seq_len)


def load_shard(options: LoraOptions, shard: Shard) -> Split:
    if not 0 <= shard.index < shard.count:
        raise TaskError(f"shard index {shard.index} outside 0..{shard.count - 1}")
    training, _ = text_data.split(_documents(options, shard.data_path), options.held_out_fraction)
    return _tokens(options, text_data.partition(training, shard.count)[shard.index])


def load_validation(options: LoraOptions, data_path: Path | None) -> Split:
    _, held = text_data.split(_documents(options, data_path), options.held_out_fraction)
    return text_data.evenly(_tokens(options, held), options.validation_sequences)


# -- loss and metrics ------------------------------------------------------------------------
def loss(options: LoraOptions, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy on float32 logits."""
    logits = model(input_ids=x.long()).logits
    return F.cross_entropy(logits.float().flatten(0, 1), y.long().flatten())


def evaluate(options: LoraOptions, model: nn.Module, data: Split) -> dict[str, float]:
    total, count = 0.0, 0
    for start in range(0, len(data), options.validation_batch_size):
        x = data.x[start:start + options.validation_batch_size]
        y = data.y[start:start + options.validation_batch_size]
        logits = model(input_ids=x.long()).logits.float()
        total += float(F.cross_entropy(logits.flatten(0, 1), y.long().flatten(), reduction="sum"))
        count += y.numel()
    mean = total / max(count, 1)
    return {"loss": mean, "perplexity": math.exp(min(mean, 50.0)), "bits_per_token": mean / math.log(2)}


def shard_units(options: LoraOptions, model: nn.Module) -> list[nn.Module]:
    """The decoder layers (FSDP2 units, and the activation-checkpointed ones)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(base, "model", base)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise TaskError(f"cannot find the decoder layers of {type(base).__name__} (expected .model.layers)")
    return list(layers)


spec = TaskSpec(
    name=NAME,
    options=LoraOptions,
    build_model=build_model,
    load_shard=load_shard,
    load_validation=load_validation,
    loss=loss,
    evaluate=evaluate,
    metrics=("loss", "perplexity", "bits_per_token"),
    lower_is_better=True,
    shard_units=shard_units,
    tokens_per_sample=lambda options: options.seq_len,
    public_data=False,  # lora_dropout draws random numbers, and files may be private
    exchanged_state=exchanged_state,
    description="LoRA adapters on a frozen transformers causal LM; only adapters move",
)
