"""The byte-level transformer: shapes, determinism, causality, what its state dict holds, learning."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from prime.tasks.transformer import (PRESETS, Transformer, TransformerConfig, flops_per_token, non_embedding_params,
                                     num_params)

TINY = PRESETS["tiny"]


def build(config: TransformerConfig = TINY, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(config)


def tokens(b: int = 2, t: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (b, t), generator=torch.Generator().manual_seed(seed))


def test_output_shape_and_dtype() -> None:
    model = build()
    logits = model(tokens(3, 17))
    assert logits.shape == (3, 17, 256) and logits.dtype == torch.float32
    assert build().to(torch.bfloat16)(tokens()).dtype == torch.bfloat16


def test_init_is_deterministic_for_a_seed() -> None:
    a, b, c = build(seed=7).state_dict(), build(seed=7).state_dict(), build(seed=8).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.0.attn.qkv.weight"], c["blocks.0.attn.qkv.weight"])


def test_residual_projections_get_the_scaled_init() -> None:
    model = build(dataclasses.replace(TINY, d_model=256, n_heads=4, n_layers=8))
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.blocks[0].attn.proj.weight.std().item() == pytest.approx(0.02 / 4, rel=0.05)
    assert model.blocks[0].mlp.down.weight.std().item() == pytest.approx(0.02 / 4, rel=0.05)


def test_causal_a_token_changes_no_earlier_logits() -> None:
    model = build().eval()
    x = tokens(1, 64)
    t = 40
    changed = x.clone()
    changed[0, t] = (x[0, t] + 1) % 256
    with torch.no_grad():
        before, after = model(x), model(changed)
    torch.testing.assert_close(before[:, :t], after[:, :t], rtol=0, atol=1e-6)
    assert not torch.allclose(before[:, t], after[:, t])


def test_state_dict_holds_only_parameters() -> None:
    model = build()
    keys = set(model.state_dict())
    assert keys == {name for name, _ in model.named_parameters(remove_duplicate=False)}
    assert not any("rope" in k for k in keys)
    assert {name for name, _ in model.named_buffers()} == {"rope_cos", "rope_sin"}


def test_uint8_input_matches_int64() -> None:
    model = build().eval()
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(model(x.to(torch.uint8)), model(x))


def test_longer_than_max_seq_len_is_an_error() -> None:
    with pytest.raises(ValueError, match="max_seq_len"):
        build()(tokens(1, TINY.max_seq_len + 1))


def test_tiny_preset_size() -> None:
    assert 100_000 <= num_params(build()) <= 200_000


def test_presets_shapes() -> None:
    assert 1.1e9 < non_embedding_params(PRESETS["1b"]) < 1.3e9
    assert PRESETS["1b"].max_seq_len == 2048 and PRESETS["125m"].d_model == 768
    assert all(c.mlp_hidden % 64 == 0 for c in PRESETS.values())


def test_8b_preset_is_llama3_8b_sized() -> None:
    c = PRESETS["8b"]
    assert (c.d_model, c.n_layers, c.n_heads, c.mlp_hidden, c.max_seq_len) == (4096, 32, 32, 14336, 2048)
    assert 7.5e9 < non_embedding_params(c) < 8.1e9
    assert 16 * non_embedding_params(c) > 120e9  # fp32 weights, gradients and AdamW's two moments


@pytest.mark.parametrize("mlp", ["swiglu", "gelu"])
def test_both_mlps_run_and_learn_gradients(mlp: str) -> None:
    config = dataclasses.replace(TINY, mlp=mlp, mlp_hidden=0)
    assert config.mlp_hidden == (4 * config.d_model if mlp == "gelu" else 192)
    model = build(config)
    model(tokens()).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_weight_tying() -> None:
    tied, untied = build(dataclasses.replace(TINY, tie_embeddings=True)), build()
    assert tied.lm_head.weight is tied.embed.weight
    assert num_params(untied) - num_params(tied) == 256 * TINY.d_model
    # A tied model's state dict (both names, one tensor) loads back and stays tied.
    fresh = build(dataclasses.replace(TINY, tie_embeddings=True), seed=3)
    fresh.load_state_dict(tied.state_dict())
    assert fresh.lm_head.weight is fresh.embed.weight and torch.equal(fresh.embed.weight, tied.embed.weight)


@pytest.mark.parametrize("tie", [False, True])
def test_flops_counts_non_embedding_params(tie: bool) -> None:
    config = dataclasses.replace(TINY, tie_embeddings=tie)
    n = num_params(build(config), exclude_embedding=True)
    assert n == non_embedding_params(config) == num_params(build(config)) - 256 * config.d_model
    assert flops_per_token(config, 100) == 6 * n + 12 * config.n_layers * config.d_model * 100


def test_meta_device_build_then_init_weights() -> None:
    """How a large model is built under FSDP2: on meta, then materialised and initialised."""
    with torch.device("meta"):
        model = Transformer(TINY)
    model.to_empty(device="cpu")
    model.init_weights()
    reference = build()
    torch.testing.assert_close(model.rope_cos, reference.rope_cos)
    assert torch.isfinite(model(tokens())).all()


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="divisible"):
        TransformerConfig(d_model=100, n_heads=3)
    with pytest.raises(ValueError, match="even"):
        TransformerConfig(d_model=12, n_heads=4)
    with pytest.raises(ValueError, match="mlp"):
        TransformerConfig(mlp="relu")  # type: ignore[arg-type]


def test_overfits_a_repeated_batch() -> None:
    model = build()
    x = tokens(4, 64, seed=5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = F.cross_entropy(model(x[:, :-1]).float().flatten(0, 1), x[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 5.0 and losses[-1] < 0.1, losses[::10]
