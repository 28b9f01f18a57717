"""Local training step on one GPU: prime's trainer engine against a plain FSDP2 bf16 loop.

Both arms train the same ``stdlib-lm`` transformer (same preset, same initial weights, the
same batches of the same shard) with FSDP2 bf16 parameters / fp32 reduction, fused AdamW
and per-block ``torch.compile``. The plain arm is the loop one writes by hand:
``fully_shard`` each block and the root, then forward, loss, backward, step. The prime arm
is ``LocalEngine.train`` (the code a trainer node runs: schedule, data position, loss
accounting), timed by the engine's own step-loop clock; the state load and the full-state
gather for the delta are timed separately. The arms alternate (plain, prime, plain, prime)
and the median of each is reported, with:

- the ratio prime / plain (target >= 0.95);
- MFU against 989 TFLOP/s (H100/H200 dense bf16) and against the bf16 matmul rate measured
  in the same run, with the PaLM/nanoGPT FLOP count (``transformer.flops_per_token``).

    python benchmarks/local_step.py [--preset 1b] [--seq-len 2048] [--batch 8] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prime.core.config import parse_config  # noqa: E402
from prime.tasks import task_of  # noqa: E402
from prime.tasks.stdlib_lm import model_config  # noqa: E402
from prime.tasks.transformer import flops_per_token, num_params  # noqa: E402
from prime.trainer.data import DataPosition, global_batches  # noqa: E402
from prime.trainer.engine import LocalEngine, LocalWork  # noqa: E402

PEAK_BF16 = 989e12  # H100/H200 SXM dense bf16 FLOP/s


def matmul_rate(n: int = 8192, reps: int = 30) -> float:
    """bf16 matmul FLOP/s on this GPU, measured now (random inputs, events, after warm-up)."""
    a, b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16), torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (start.elapsed_time(end) / 1e3)


class PlainLoop:
    """The hand-written FSDP2 bf16 loop: no prime code on the step path."""

    def __init__(self, task, lr: float, device: torch.device) -> None:
        self.device = device
        self.model = task.build_model(0).to(device)
        cuda = device.type == "cuda"
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for block in self.model.blocks:
            if cuda:
                block.compile()
            fully_shard(block, mp_policy=policy)
        fully_shard(self.model, mp_policy=policy)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, fused=cuda)

    def run(self, data, batches) -> float:
        sync(self.device)
        t0 = time.perf_counter()
        for batch in batches:
            x = data.x[batch.index].to(self.device, non_blocking=True)
            y = data.y[batch.index].to(self.device, non_blocking=True)
            logits = self.model(x)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.long().flatten())
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        sync(self.device)
        return time.perf_counter() - t0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(preset: str, seq_len: int, batch: int, steps: int, warmup: int, repeats: int, matmul: float,
          device: torch.device) -> dict:
    config = parse_config({
        "task": {"name": "stdlib-lm", "options": {"preset": preset, "seq_len": seq_len}},
        "training": {"batch_size": batch, "learning_rate": 3e-4, "precision": "bf16", "compile": True,
                     "optimizer": {"name": "adamw", "beta2": 0.95}},
    })
    task = task_of(config)
    cfg = model_config(task.options)
    engine = LocalEngine(task, config.training, device=device)
    engine.use_shard(0, 1)
    data = engine.data
    start = task.build_model(0).state_dict()  # the global state a round starts from (fp32, CPU)
    plain = PlainLoop(task, 3e-4, device)
    tokens = steps * batch * seq_len

    def plain_batches(n: int):
        stream = global_batches(len(data), batch, 0, DataPosition(), drop_last=True)
        return [next(stream) for _ in range(n)]

    plain.run(data, plain_batches(warmup))  # compile + allocator warm-up
    engine.train(start, LocalWork(steps=warmup))
    plain_s, prime_s, overhead_s = [], [], []
    for _ in range(repeats):
        plain_s.append(plain.run(data, plain_batches(steps)))
        t0 = time.perf_counter()
        _, metrics = engine.train(start, LocalWork(steps=steps))
        total = time.perf_counter() - t0
        prime_s.append(metrics.seconds)
        overhead_s.append(total - metrics.seconds)  # load the global state + gather the full state for the delta
    fpt = flops_per_token(cfg, seq_len)
    plain_tps, prime_tps = tokens / statistics.median(plain_s), tokens / statistics.median(prime_s)
    return {
        "preset": preset, "params": num_params(plain.model), "seq_len": seq_len, "batch": batch, "steps": steps,
        "plain_tokens_per_s": plain_tps, "prime_tokens_per_s": prime_tps, "ratio": prime_tps / plain_tps,
        "prime_mfu_989": prime_tps * fpt / PEAK_BF16, "plain_mfu_989": plain_tps * fpt / PEAK_BF16,
        "prime_mfu_matmul": prime_tps * fpt / matmul, "matmul_tflops": matmul / 1e12,
        "load_and_gather_s": statistics.median(overhead_s), "step_s": statistics.median(prime_s) / steps,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0, "runs_plain_s": plain_s, "runs_prime_s": prime_s,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", action="append", help="stdlib-lm preset (repeatable; default 1b)")
    p.add_argument("--seq-len", type=int, action="append", help="sequence length per preset (default 2048)")
    p.add_argument("--batch", type=int, action="append", help="sequences per step per preset (default 8)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cuda", help="cuda (the benchmark), or cpu for a smoke run of a small preset")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("local_step: needs a CUDA GPU (run it on the device machine), or --device cpu for a smoke run",
              file=sys.stderr)
        return 2
    presets = args.preset or ["1b"]
    seqs = args.seq_len or [2048] * len(presets)
    batches = args.batch or [8] * len(presets)
    matmul = matmul_rate() if device.type == "cuda" else float("nan")
    print(f"GPU {torch.cuda.get_device_name() if device.type == 'cuda' else 'none (cpu smoke run)'}  torch {torch.__version__}  bf16 matmul {matmul / 1e12:.0f} TFLOP/s "
          f"({matmul / PEAK_BF16:.2f}x of 989)")
    results = []
    for preset, seq, batch in zip(presets, seqs, batches):
        r = bench(preset, seq, batch, args.steps, args.warmup, args.repeats, matmul, device)
        results.append(r)
        print(f"{preset:>5} ({r['params'] / 1e9:.2f}B) seq {seq} x {batch}: plain {r['plain_tokens_per_s']:,.0f} tok/s, "
              f"prime {r['prime_tokens_per_s']:,.0f} tok/s  ratio {r['ratio']:.3f}x  "
              f"MFU {r['prime_mfu_989']:.1%} of 989 (plain {r['plain_mfu_989']:.1%}), "
              f"{r['prime_mfu_matmul']:.1%} of measured matmul; load+gather {r['load_and_gather_s']:.2f}s/round, "
              f"peak {r['peak_memory_gib']:.0f} GiB", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "local_step.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
