"""A byte-level decoder-only transformer in one readable file (nanoGPT / Llama style).

Pre-norm residual blocks (RMSNorm → attention with rotary positions → RMSNorm → SwiGLU or
GELU MLP), a final norm and an LM head over the 256 byte values. Written for bf16 on a GPU
under FSDP2, where each ``Block`` is one shard unit: the fused QKV projection and
``scaled_dot_product_attention(is_causal=True)`` keep attention in one flash kernel with no
T×T mask, rope is a real-valued rotation of two halves, and ``Block.forward`` has no
data-dependent control flow, so ``torch.compile`` can take a block whole.

The rope tables are non-persistent buffers: ``state_dict()`` holds only parameters, because
the state dict is what travels on the network and is averaged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TransformerConfig:
    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    mlp: Literal["swiglu", "gelu"] = "swiglu"
    #: MLP hidden width; 0: derived (SwiGLU: the multiple of 64 nearest 8/3·d, which keeps its
    #: three matrices at the parameter count of GELU's two at 4·d; GELU: 4·d).
    mlp_hidden: int = 0
    max_seq_len: int = 128
    tie_embeddings: bool = False
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.mlp not in ("swiglu", "gelu"):
            raise ValueError(f"mlp must be 'swiglu' or 'gelu', got {self.mlp!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head dim {self.head_dim} (d_model / n_heads) must be even for rotary embeddings")
        if self.mlp_hidden < 0:
            raise ValueError(f"mlp_hidden must be 0 (derived) or positive, got {self.mlp_hidden}")
        if self.mlp_hidden == 0:
            derived = max(64, 64 * round(8 * self.d_model / 3 / 64)) if self.mlp == "swiglu" else 4 * self.d_model
            object.__setattr__(self, "mlp_hidden", derived)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


PRESETS: dict[str, TransformerConfig] = {
    # Trains on 2 CPU cores in CI: ~140k parameters.
    "tiny": TransformerConfig(d_model=64, n_layers=2, n_heads=4, max_seq_len=128),
    # GPT-2 small/medium shapes; with a 256-byte vocabulary they hold ~85M and ~300M parameters.
    "125m": TransformerConfig(d_model=768, n_layers=12, n_heads=12, max_seq_len=1024),
    "350m": TransformerConfig(d_model=1024, n_layers=24, n_heads=16, max_seq_len=1024),
    # ~1.2B parameters: the single-H200 MFU benchmark configuration.
    "1b": TransformerConfig(d_model=2048, n_layers=24, n_heads=16, max_seq_len=2048),
    # Llama-3-8B's dims (width, depth, heads, SwiGLU 14336, rope theta 5e5) with full multi-head
    # attention (no grouped KV heads) and the byte vocabulary: ~7.8B parameters. In fp32 with AdamW
    # its state alone is ~125 GB, more than one GPU holds with activations: it must be sharded.
    "8b": TransformerConfig(d_model=4096, n_layers=32, n_heads=32, mlp_hidden=14336, max_seq_len=2048,
                            rope_theta=500000.0),
}


class RMSNorm(nn.Module):
    """RMSNorm with a learned scale; the fused ``F.rms_norm`` where torch has it (≥ 2.4)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(F, "rms_norm"):
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_tables(head_dim: int, seq_len: int, theta: float, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [seq_len, head_dim // 2] in float32 (positions × frequencies)."""
    freqs = theta ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), freqs)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, T, H, D] by position: pairs are (i, i + D/2), the GPT-NeoX/Llama-HF layout,
    so the rotation is two contiguous half slices rather than complex numbers."""
    cos = cos[:, None, :].to(x.dtype)  # [T, 1, D/2], broadcast over batch and heads
    sin = sin[:, None, :].to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class Attention(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.n_heads, self.head_dim = config.n_heads, config.head_dim
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).unbind(dim=2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # [B, H, T, D] views with a unit last stride: what the flash / efficient kernels take.
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    """SwiGLU (gate and up projections fused into one matrix) or GELU."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        self.up = nn.Linear(config.d_model, (2 if self.swiglu else 1) * config.mlp_hidden, bias=False)
        self.down = nn.Linear(config.mlp_hidden, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        if self.swiglu:  # fixed at construction, not data-dependent: compiles as one branch
            gate, up = h.chunk(2, dim=-1)
            return self.down(F.silu(gate) * up)
        return self.down(F.gelu(h, approximate="tanh"))


class Block(nn.Module):
    """Pre-norm residual block; one FSDP2 shard unit (and activation-checkpoint/compile unit)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = rope_tables(config.head_dim, config.max_seq_len, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """GPT-2 init: N(0, 0.02), residual output projections scaled by 1/sqrt(2·n_layers) so the
        residual stream's variance does not grow with depth; norms at 1. Also refills the rope
        tables, so a model built on the meta device and ``to_empty``-ed can call this."""
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                std = residual_std if name.endswith(("attn.proj", "mlp.down")) else 0.02
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        cos, sin = rope_tables(self.config.head_dim, self.config.max_seq_len, self.config.rope_theta, self.rope_cos.device)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Byte ids [B, T] of any integer dtype (uint8 included) → logits [B, T, vocab]."""
        T = idx.shape[1]
        if T > self.config.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds max_seq_len {self.config.max_seq_len}")
        x = self.embed(idx.long())
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.lm_head(self.norm(x))


def num_params(model: nn.Module, exclude_embedding: bool = False) -> int:
    """Parameters of ``model`` (a shared weight once); without the input embedding if asked, so a
    tied LM head is excluded with it."""
    params = {id(p): p for p in model.parameters()}
    if exclude_embedding and isinstance(getattr(model, "embed", None), nn.Embedding):
        params.pop(id(model.embed.weight), None)
    return sum(p.numel() for p in params.values())


def non_embedding_params(config: TransformerConfig) -> int:
    """What ``num_params(Transformer(config), exclude_embedding=True)`` counts, from the config alone."""
    d, h = config.d_model, config.mlp_hidden
    mlp = (3 if config.mlp == "swiglu" else 2) * d * h
    per_block = 4 * d * d + mlp + 2 * d  # qkv + proj, MLP, two norms
    head = 0 if config.tie_embeddings else config.vocab_size * d
    return config.n_layers * per_block + d + head


def flops_per_token(config: TransformerConfig, seq_len: int) -> int:
    """Training FLOPs per token, the PaLM (appendix B) / nanoGPT MFU convention:
    6·N + 12·n_layers·d_model·seq_len.

    6·N: forward + backward matmuls (2 + 4 FLOPs per parameter per token), N the non-embedding
    parameters plus the LM head when it is untied (an embedding lookup is not a matmul; a tied
    head is left out with the embedding, which slightly under-counts). 12·L·d·T: the attention
    scores and weighted sum (QKᵀ and AV, forward and backward), counted as if not causal."""
    return 6 * non_embedding_params(config) + 12 * config.n_layers * config.d_model * seq_len
