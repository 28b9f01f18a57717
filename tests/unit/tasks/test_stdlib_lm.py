"""The stdlib-lm task: its options, its data on the real stdlib, its metrics, and that it learns."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from prime.core.errors import TaskError
from prime.tasks import stdlib_lm
from prime.tasks.spec import Shard
from prime.tasks.stdlib_lm import StdlibLMOptions, model_config, sequences_per_batch, spec


@pytest.mark.parametrize("bad", [{"d_model": "wide"}, {"preset": "2b"}, {"mlp": "relu"}, {"seq_len": -1},
                                 {"d_model_typo": 64}, {"d_model": 100, "n_heads": 3}, {"d_model": 12, "n_heads": 4},
                                 {"tokens_per_batch": 64}])
def test_bad_options_are_errors(bad: dict) -> None:
    with pytest.raises(ValidationError):
        StdlibLMOptions(**bad)


def test_options_are_frozen() -> None:
    with pytest.raises(ValidationError):
        StdlibLMOptions().preset = "1b"  # type: ignore[misc]


def test_model_config_applies_overrides() -> None:
    assert model_config(StdlibLMOptions()).d_model == 64
    config = model_config(StdlibLMOptions(preset="125m", n_layers=2, seq_len=256, mlp="gelu", d_model=0))
    assert (config.d_model, config.n_layers, config.max_seq_len, config.mlp, config.mlp_hidden) == (768, 2, 256, "gelu", 3072)
    assert model_config(StdlibLMOptions(d_model=128)).mlp_hidden == 320  # re-derived for the new width


def test_sequences_per_batch() -> None:
    assert sequences_per_batch(StdlibLMOptions(), 32) == 32
    assert sequences_per_batch(StdlibLMOptions(tokens_per_batch=4096), 32) == 32
    assert sequences_per_batch(StdlibLMOptions(tokens_per_batch=1000, seq_len=100), 8) == 10


def test_spec_metadata() -> None:
    task = spec.bind(StdlibLMOptions())
    assert spec.name == "stdlib-lm" and stdlib_lm.spec is spec
    assert task.metrics[0] == "bits_per_byte" and spec.lower_is_better
    assert task.tokens_per_sample() == 128
    model = task.build_model(0)
    assert task.shard_units(model) == list(model.blocks)


def test_shards_and_validation_on_the_real_stdlib() -> None:
    task = spec.bind(StdlibLMOptions())
    shards = [task.load_shard(Shard(i, 4)) for i in range(4)]
    for shard in shards:
        assert shard.x.dtype == torch.uint8 and shard.x.shape[1] == 128 and len(shard) > 5000
        assert torch.equal(shard.x[:, 1:], shard.y[:, :-1])
    assert not torch.equal(shards[0].x[:100], shards[1].x[:100])
    validation = task.load_validation()
    assert len(validation) == 256 and validation.x.shape == (256, 128)
    assert len(spec.bind(StdlibLMOptions(validation_sequences=10_000)).load_validation()) > 256
    with pytest.raises(TaskError, match="shard index"):
        task.load_shard(Shard(4, 4))


def test_data_path_is_read_like_the_stdlib(tmp_path: Path) -> None:
    for name in ("json", "one", "two"):
        (tmp_path / f"{name}.py").write_text(f"# module {name}\n" * 40)
    task = spec.bind(StdlibLMOptions(seq_len=16))
    a, b = task.load_shard(Shard(0, 2, tmp_path)), task.load_shard(Shard(1, 2, tmp_path))
    assert {bytes(a.x[0].numpy()), bytes(b.x[0].numpy())} == {b"# module one\n# m", b"# module two\n# m"}
    assert bytes(task.load_validation(tmp_path).x[0].numpy()) == b"# module json\n# "
    (tmp_path / "two.py").write_bytes(b"\xc3(")
    with pytest.raises(TaskError, match="two.py"):
        task.load_shard(Shard(1, 2, tmp_path))  # equal sizes: by name, "two" goes to shard 1


def test_untrained_model_is_near_uniform() -> None:
    task = spec.bind(StdlibLMOptions())
    metrics = task.evaluate(task.build_model(0), task.load_validation())
    assert set(metrics) == {"bits_per_byte", "loss", "perplexity"}
    assert 6 < metrics["bits_per_byte"] < 10
    assert metrics["bits_per_byte"] == pytest.approx(metrics["loss"] / math.log(2))
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]))


def test_loss_is_float32_cross_entropy_even_for_bf16_models() -> None:
    task = spec.bind(StdlibLMOptions())
    data = task.load_shard(Shard(0, 4))
    model = task.build_model(0).to(torch.bfloat16)
    loss = task.loss(model, data.x[:2], data.y[:2])
    assert loss.dtype == torch.float32 and loss.ndim == 0 and 4 < loss.item() < 7


def test_training_on_one_shard_lowers_validation_bits_per_byte() -> None:
    task = spec.bind(StdlibLMOptions())
    train, validation = task.load_shard(Shard(0, 4)), task.load_validation()
    model = task.build_model(0)
    before = task.evaluate(model, validation)["bits_per_byte"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(100):
        idx = torch.randint(0, len(train), (16,), generator=generator)
        loss = task.loss(model, train.x[idx], train.y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = task.evaluate(model, validation)["bits_per_byte"]
    assert after < before - 3.0, (before, after)
