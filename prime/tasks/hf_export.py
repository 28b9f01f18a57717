"""A stdlib-lm model as a transformers directory (``LlamaForCausalLM``): config.json + model.safetensors.

prime's byte-level transformer is a Llama in all but names: pre-norm RMSNorm, rotary positions
in the half-split (GPT-NeoX/Llama-HF) layout, SDPA attention with one KV head per head, a SwiGLU
MLP, no biases. So its weights map one to one (the fused ``qkv`` and ``up`` matrices split into
``q/k/v_proj`` and ``gate/up_proj``), and ``AutoModelForCausalLM.from_pretrained(DIR)`` computes
the same logits for the same byte ids (``tests/unit/tasks/test_hf_export.py`` checks it). The
GELU variant has no Llama equivalent and is refused. The vocabulary is the 256 byte values:
token id = byte; there is no tokenizer file to ship.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from prime.atomic import write_atomic
from prime.core import tensors
from prime.core.errors import TaskError
from prime.tasks.exported import DIR_WEIGHTS, MAX_WEIGHTS_BYTES
from prime.tasks.registry import resolve_task
from prime.tasks.transformer import TransformerConfig

HF_WEIGHTS = "model.safetensors"
HF_CONFIG = "config.json"


def llama_config(config: TransformerConfig) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": config.vocab_size,
        "hidden_size": config.d_model, "intermediate_size": config.mlp_hidden, "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads, "num_key_value_heads": config.n_heads, "head_dim": config.head_dim,
        "hidden_act": "silu", "max_position_embeddings": config.max_seq_len, "rms_norm_eps": config.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "tie_word_embeddings": config.tie_embeddings, "attention_bias": False, "mlp_bias": False,
        "bos_token_id": None, "eos_token_id": None, "pad_token_id": None, "torch_dtype": "float32",
    }


def llama_state(state: dict[str, torch.Tensor], config: TransformerConfig) -> dict[str, torch.Tensor]:
    """prime's tensor names and fused matrices as Llama's."""
    out = {"model.embed_tokens.weight": state["embed.weight"], "model.norm.weight": state["norm.weight"]}
    if not config.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    for i in range(config.n_layers):
        p, q = f"blocks.{i}.", f"model.layers.{i}."
        wq, wk, wv = state[p + "attn.qkv.weight"].chunk(3, dim=0)
        gate, up = state[p + "mlp.up.weight"].chunk(2, dim=0)
        out.update({
            q + "input_layernorm.weight": state[p + "attn_norm.weight"],
            q + "self_attn.q_proj.weight": wq, q + "self_attn.k_proj.weight": wk, q + "self_attn.v_proj.weight": wv,
            q + "self_attn.o_proj.weight": state[p + "attn.proj.weight"],
            q + "post_attention_layernorm.weight": state[p + "mlp_norm.weight"],
            q + "mlp.gate_proj.weight": gate, q + "mlp.up_proj.weight": up,
            q + "mlp.down_proj.weight": state[p + "mlp.down.weight"],
        })
    return {name: t.contiguous() for name, t in out.items()}


def write_transformers_dir(out: Path, card: dict[str, Any]) -> None:
    """Beside prime's own export in ``out`` (``DIR_WEIGHTS`` and its card), the transformers files."""
    from prime.tasks.stdlib_lm import model_config

    if card.get("task") != "stdlib-lm":
        raise TaskError(f"--format transformers writes stdlib-lm models (a Llama); this one is task "
                        f"{card.get('task')!r}: use --format dir or safetensors")
    task = resolve_task("stdlib-lm", card.get("task_options") or {}, str(out / DIR_WEIGHTS))
    config = model_config(task.options)
    if config.mlp != "swiglu":
        raise TaskError("--format transformers needs mlp = \"swiglu\" (a Llama MLP); this model uses GELU: "
                        "use --format dir")
    state = tensors.decode_state(bytearray((out / DIR_WEIGHTS).read_bytes()), max_bytes=MAX_WEIGHTS_BYTES)
    from safetensors.torch import save

    write_atomic(out / HF_WEIGHTS, save(llama_state(state, config), metadata={"format": "pt"}))
    write_atomic(out / HF_CONFIG, (json.dumps(llama_config(config), indent=2, sort_keys=True) + "\n").encode())
