"""``stdlib-lm``: a byte-level transformer language model trained on the Python standard library.

Real text that ships with every Python install (``stdlib_corpus``), split non-IID by module
across trainers, with held-out modules for validation; the model is ``transformer.Transformer``
at one of its presets (``tiny`` trains on a laptop CPU; ``1b`` is the H200 MFU benchmark; ``8b``
needs several GPUs), optionally overridden. The headline metric is bits per byte (lower is
better; 8 is a uniform guess over the 256 byte values).
"""

from __future__ import annotations

import platform
from dataclasses import replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from prime.core.datasets import Split
from prime.core.errors import TaskError
from prime.tasks import stdlib_corpus as corpus
from prime.tasks.metrics import evaluate_byte_lm
from prime.tasks.spec import DataSource, Shard, TaskOptions, TaskSpec
from prime.tasks.transformer import PRESETS, Transformer, TransformerConfig


class StdlibLMOptions(TaskOptions):
    """``[task.options]`` of ``stdlib-lm``. Overrides left at 0 / unset take the preset's value."""

    preset: Literal["tiny", "125m", "350m", "1b", "8b"] = "tiny"
    d_model: int | None = Field(None, ge=0)
    n_layers: int | None = Field(None, ge=0)
    n_heads: int | None = Field(None, ge=0)
    mlp: Literal["swiglu", "gelu"] | None = None
    #: Sequence length of a sample (and the model's maximum); 0: the preset's.
    seq_len: int | None = Field(None, ge=0)
    #: When > 0, a micro-batch is tokens_per_batch // seq_len sequences, overriding
    #: training.batch_size (see ``sequences_per_batch``): batch sizes that mean the same
    #: amount of text whatever the sequence length.
    tokens_per_batch: int = Field(0, ge=0)
    #: Most held-out sequences the coordinator evaluates (evenly spaced), bounding its cost.
    validation_sequences: int = Field(256, ge=1)
    validation_batch_size: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _check_model(self) -> "StdlibLMOptions":
        config = model_config(self)  # TransformerConfig checks divisibility and an even head dim
        if 0 < self.tokens_per_batch < config.max_seq_len:
            raise ValueError(f"tokens_per_batch {self.tokens_per_batch} is less than one sequence of {config.max_seq_len}")
        return self


def model_config(options: StdlibLMOptions) -> TransformerConfig:
    """The preset with the options' overrides applied."""
    base = PRESETS[options.preset]
    overrides = {"d_model": options.d_model, "n_layers": options.n_layers, "n_heads": options.n_heads,
                 "mlp": options.mlp, "max_seq_len": options.seq_len}
    overrides = {k: v for k, v in overrides.items() if v}
    if "mlp" in overrides or "d_model" in overrides:
        overrides["mlp_hidden"] = 0  # re-derive from the new width / kind
    return replace(base, **overrides)


def seq_len(options: StdlibLMOptions) -> int:
    return model_config(options).max_seq_len


def sequences_per_batch(options: StdlibLMOptions, default: int) -> int:
    """Sequences per micro-batch: tokens_per_batch // seq_len when set, else ``default``
    (training.batch_size)."""
    return options.tokens_per_batch // seq_len(options) if options.tokens_per_batch > 0 else default


def build_model(options: StdlibLMOptions, seed: int) -> nn.Module:
    """The initial weights come from the global RNG, which ``Task.build_model`` seeds with ``seed``."""
    return Transformer(model_config(options))


def load_shard(options: StdlibLMOptions, shard: Shard) -> Split:
    """Shard ``index`` of ``count``: whole modules of the training part, balanced by bytes."""
    if not 0 <= shard.index < shard.count:
        raise TaskError(f"shard index {shard.index} outside 0..{shard.count - 1}")
    training, _ = corpus.split_modules(corpus.scan(shard.data_path))
    modules = corpus.partition(training, shard.count)[shard.index]
    return corpus.windows(corpus.read_modules(modules), seq_len(options))


def data_source(options: StdlibLMOptions, shard: Shard) -> DataSource:
    """The ``.py`` files of the shard's modules, named relative to the corpus root."""
    root = Path(shard.data_path) if shard.data_path is not None else corpus.default_root()
    training, _ = corpus.split_modules(corpus.scan(root))
    modules = corpus.partition(training, shard.count)[shard.index]
    resolved = root.resolve()
    files = {path.resolve().relative_to(resolved).as_posix(): path for m in modules for path in m.files}
    return DataSource("python-stdlib-source", platform.python_version(), files)


def load_validation(options: StdlibLMOptions, data_path: Path | None) -> Split:
    """Windows of the held-out modules, at most ``validation_sequences`` of them, evenly spaced."""
    _, held = corpus.split_modules(corpus.scan(data_path))
    if not held:
        raise TaskError(f"the corpus under {data_path or corpus.default_root()} has a single module: nothing to hold out")
    data = corpus.windows(corpus.read_modules(held), seq_len(options))
    n, k = len(data), min(len(data), options.validation_sequences)
    if k == n:
        return data
    idx = torch.arange(k) * n // k
    return Split(data.x[idx], data.y[idx])


def loss(options: StdlibLMOptions, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-byte cross-entropy, on float32 logits (bf16 log-softmax loses precision)."""
    logits = model(x)
    return F.cross_entropy(logits.float().flatten(0, 1), y.long().flatten())


def evaluate(options: StdlibLMOptions, model: nn.Module, data: Split) -> dict[str, float]:
    return evaluate_byte_lm(model, data, batch_size=options.validation_batch_size)


spec = TaskSpec(
    name="stdlib-lm",
    options=StdlibLMOptions,
    build_model=build_model,
    load_shard=load_shard,
    load_validation=load_validation,
    loss=loss,
    evaluate=evaluate,
    metrics=("bits_per_byte", "loss", "perplexity"),
    lower_is_better=True,
    shard_units=lambda options, model: list(model.blocks),
    tokens_per_sample=seq_len,
    batch_size=sequences_per_batch,
    public_data=True,
    data_source=data_source,
    description="byte-level transformer LM on the Python standard library's source, split non-IID by module",
)
