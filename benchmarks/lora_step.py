"""LoRA training throughput: prime's engine step against plain ``transformers`` + ``peft`` (issue 13, item 4).

One model, built from a config (``llama-1b``: 1.1B parameters, Llama-3.2-1B-like with a 32k
vocab), LoRA adapters on every projection, bf16 compute with fp32 master weights and activation
checkpointing, AdamW (fused on CUDA), the same random-token batches, in the same process:

- ``prime``: ``LocalEngine`` (the trainer's engine: FSDP2 ``MixedPrecisionPolicy`` bf16, decoder
  layers checkpointed, only the adapters gathered for the delta): tokens/s of its step loop, and of
  the whole round (load the adapters, train, gather the delta);
- ``plain``: the loop a ``transformers`` + ``peft`` user writes: ``torch.autocast(bfloat16)`` over fp32
  weights, ``gradient_checkpointing_enable``, fused AdamW on the trainable parameters.

    python benchmarks/lora_step.py [--steps 20] [--batch 8] [--seq-len 2048] [--json out.json]
    python benchmarks/lora_step.py --tiny          # CPU smoke check (tiny-llama, fp32 autocast off)
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prime.core.config import parse_config  # noqa: E402
from prime.core.datasets import Split  # noqa: E402
from prime.tasks import hf_base  # noqa: E402
from prime.tasks.registry import resolve_task  # noqa: E402
from prime.trainer.engine import LocalEngine, LocalWork  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batches(vocab: int, batch: int, seq_len: int, count: int) -> Split:
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(vocab, (batch * count, seq_len + 1), generator=gen, dtype=torch.int32)
    return Split(tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous())


def prime_arm(task, config, device, data: Split, steps: int, warmup: int) -> dict:
    engine = LocalEngine(task, config.training, device=device)
    engine.use_data(data)
    start = engine.global_state()  # the adapters as built: what a round starts from
    engine.train(start, LocalWork(steps=warmup))  # compile caches, allocator, kernels
    sync(device)
    t0 = time.perf_counter()
    delta, metrics = engine.train(start, LocalWork(steps=steps))
    sync(device)
    wall = time.perf_counter() - t0
    tokens = metrics.num_samples * task.tokens_per_sample()
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    engine.close()
    return {"tokens_per_second": metrics.tokens_per_second, "round_tokens_per_second": tokens / wall,
            "step_seconds": metrics.seconds / steps, "loss": metrics.loss, "delta_tensors": len(delta),
            "peak_gib": peak}


def plain_arm(model, device, data: Split, steps: int, warmup: int, batch: int, bf16: bool, ckpt: bool) -> dict:
    model = model.to(device)
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda")
    losses = []

    def step(i: int) -> None:
        x = data.x[i * batch:(i + 1) * batch].to(device, non_blocking=True).long()
        y = data.y[i * batch:(i + 1) * batch].to(device, non_blocking=True).long()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())

    for i in range(warmup):
        step(i)
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step(i % (len(data) // batch))
    sync(device)
    seconds = time.perf_counter() - t0
    tokens = steps * batch * data.x.shape[1]
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"tokens_per_second": tokens / seconds, "step_seconds": seconds / steps,
            "loss": float(torch.stack(losses[-steps:]).mean()), "peak_gib": peak}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="CPU smoke check: tiny-llama, short sequences, fp32")
    p.add_argument("--preset", default=None, choices=sorted(hf_base.PRESETS))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--r", type=int, default=16)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    preset = args.preset or ("tiny-llama" if args.tiny else "llama-1b")
    seq_len = 64 if args.tiny else args.seq_len
    steps, batch = (3, 4) if args.tiny else (args.steps, args.batch)
    bf16 = device.type == "cuda"
    options = {"base_preset": preset, "r": args.r, "lora_alpha": 2.0 * args.r, "target_modules": TARGETS,
               "stdlib_modules": ["json"], "seq_len": seq_len}
    config = parse_config({"task": {"name": "hf-causal-lm-lora", "options": options},
                           "training": {"batch_size": batch, "learning_rate": 1e-4, "gradient_clipping": 1.0,
                                        "precision": "bf16" if bf16 else "fp32",
                                        "activation_checkpointing": True, "optimizer": {"name": "adamw"}}},
                          "lora_step")
    task = resolve_task("hf-causal-lm-lora", options)
    built = time.perf_counter()
    probe = task.build_model(0)
    total = sum(p.numel() for p in probe.parameters())
    trainable = sum(p.numel() for p in probe.parameters() if p.requires_grad)
    vocab = probe.get_base_model().config.vocab_size
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"lora_step: {preset} ({total / 1e9:.3f}B parameters, {trainable / 1e6:.2f}M trainable, r={args.r}), "
          f"{name}, {'bf16' if bf16 else 'fp32'}, activation checkpointing, batch {batch} x {seq_len} tokens, "
          f"{steps} timed steps (build {time.perf_counter() - built:.1f}s)", flush=True)
    data = batches(vocab, batch, seq_len, steps + args.warmup)
    prime = prime_arm(task, config, device, data, steps, args.warmup)
    print(f"  prime engine:  {prime['tokens_per_second']:>10.0f} tokens/s (step loop), "
          f"{prime['round_tokens_per_second']:.0f} tokens/s (whole round), peak {prime['peak_gib']} GiB", flush=True)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    plain = plain_arm(probe, device, data, steps, args.warmup, batch, bf16, ckpt=True)
    print(f"  plain HF+peft: {plain['tokens_per_second']:>10.0f} tokens/s, peak {plain['peak_gib']} GiB", flush=True)
    ratio = prime["tokens_per_second"] / plain["tokens_per_second"]
    print(f"prime / plain tokens per second: {ratio:.3f} (step loop), "
          f"{prime['round_tokens_per_second'] / plain['tokens_per_second']:.3f} (prime's whole round)")
    result = {"preset": preset, "parameters": total, "trainable": trainable, "device": name, "bf16": bf16,
              "batch": batch, "seq_len": seq_len, "steps": steps, "prime": prime, "plain": plain, "ratio": ratio,
              "torch": torch.__version__}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
