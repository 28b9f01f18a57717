"""One trainer node on N GPUs: tokens/s per GPU at N = 1, 2, 4, 8 (weak scaling), MFU, the full-state
gather and its share of a round, peak memory per GPU; with ``--pipeline``, the update through the normal
update path.

For each N in ``--ranks`` this launches ``torchrun --standalone --nproc-per-node N
benchmarks/multi_gpu_worker.py``: one trainer node's ``LocalEngine`` (FSDP2 over the N ranks, bf16
through ``training.precision``, compiled blocks), rank 0 leading and the others following as on a real
node. The micro-batch per GPU is fixed (``--batch`` sequences of the preset's length; the node's batch
is N times that), so perfect scaling keeps tokens/s per GPU constant. From each run's rank 0, against
N = 1 measured in the same invocation:

- tokens/s for the node and per GPU, and per-GPU(N) / per-GPU(1) (the target at N = 8: at least 0.9);
- MFU per GPU against 989 TFLOP/s (H100/H200 dense bf16), counted as in ``local_step.py``;
- the seconds to load the start state (broadcast from rank 0) and to gather the full state to rank 0's
  CPU for the delta, what a trainer does at each round's start and end; the gather's share of a round
  of H = ``--local-steps`` steps, **extrapolated**: H x the measured step time + load + gather;
- peak memory per GPU (``torch.cuda.max_memory_allocated`` on each rank) while training rounds, and apart
  the model build's (the whole model passes through each GPU before it is sharded); on CPU each rank's
  peak resident set instead.

``--pipeline`` (with the ``8b`` preset: a model whose fp32 weights, gradients and AdamW state, ~125 GB,
do not fit one GPU) then sends the node's last delta through the job's update codec, a signed
``UpdateRecord`` and the coordinator's checks and decoding (``multi_gpu_worker.update_pipeline``).

    python benchmarks/multi_gpu.py                               # 1b, N = 1,2,4,8 (those visible)
    python benchmarks/multi_gpu.py --preset 8b --ranks 8 --batch 4 --activation-checkpointing --pipeline
    python benchmarks/multi_gpu.py --device cpu --ranks 1,2 --preset tiny --batch 4   # smoke run over Gloo
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.local_step import PEAK_BF16  # noqa: E402

WORKER = Path(__file__).resolve().parent / "multi_gpu_worker.py"
GIB = 2**30


def summarize(runs: list[dict[str, Any]], local_steps: int, peak_flops: float = PEAK_BF16) -> list[dict[str, Any]]:
    """Each worker's result with the figures derived from it: per-GPU rate, the ratio to N = 1 of the same
    invocation (None without one), MFU, the extrapolated round and the gather's share of it."""
    base = next((r for r in runs if r["ranks"] == 1), None)
    rows = []
    for r in runs:
        per_gpu = r["tokens_per_s"] / r["ranks"]
        round_s = local_steps * r["step_s"] + r["load_s"] + r["gather_s"]
        rows.append({
            **r,
            "tokens_per_s_per_gpu": per_gpu,
            "scaling_vs_1": per_gpu / base["tokens_per_s"] if base else None,
            "mfu": per_gpu * r["flops_per_token"] / peak_flops,
            "local_steps": local_steps,
            "round_s_extrapolated": round_s,
            "gather_share": r["gather_s"] / round_s,
        })
    return rows


def parse_ranks(text: str) -> list[int]:
    try:
        ranks = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ranks takes comma-separated integers, got {text!r}") from None
    if not ranks or ranks[0] < 1:
        raise argparse.ArgumentTypeError(f"--ranks needs positive counts, got {text!r}")
    return ranks


def worker_args(args: argparse.Namespace) -> list[str]:
    out = ["--device", args.device, "--preset", args.preset, "--batch", str(args.batch), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--repeats", str(args.repeats), "--precision", args.precision,
           "--compile" if args.compile else "--no-compile"]
    if args.seq_len:
        out += ["--seq-len", str(args.seq_len)]
    if args.activation_checkpointing:
        out.append("--activation-checkpointing")
    if args.pipeline:
        out += ["--pipeline", "--codec", args.codec]
    if args.tmp_dir:
        out += ["--tmp-dir", str(args.tmp_dir)]
    return out


def launch(n: int, args: argparse.Namespace, result: Path) -> int:
    """One torchrun of the worker on ``n`` ranks; its output goes straight to ours."""
    env = dict(os.environ)
    # torchrun would set 1; share the host's cores among the ranks instead (the model build is on the CPU).
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", str(WORKER),
           *worker_args(args), "--result", str(result)]
    try:
        return subprocess.run(cmd, env=env, timeout=args.timeout).returncode
    except subprocess.TimeoutExpired:
        print(f"N={n}: no result after {args.timeout:.0f}s (--timeout)", file=sys.stderr)
        return 124


def count(n: float) -> str:
    """1.21B, 140k: parameter counts at any size."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


def size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def secs(s: float) -> str:
    return f"{s:.2f}s" if s >= 1 else f"{s * 1e3:.1f} ms"


def print_row(r: dict[str, Any]) -> None:
    cuda = r["device"] == "cuda"
    ratio = f"{r['scaling_vs_1']:.3f}x of N=1" if r["scaling_vs_1"] is not None else "no N=1 in this run"
    mfu = f"MFU {r['mfu']:.1%}" if cuda else "MFU -"
    memory = r["device_peak_bytes"] if cuda else r["host_peak_bytes"]
    build = f" (model build {max(r['build_peak_bytes']) / GIB:.1f} GiB)" if cuda else ""
    print(f"N={r['ranks']}: node {r['tokens_per_s']:,.0f} tok/s, per {'GPU' if cuda else 'rank'} "
          f"{r['tokens_per_s_per_gpu']:,.0f} tok/s "
          f"({ratio}), {mfu} of 989 TFLOP/s; step {secs(r['step_s'])}; load {secs(r['load_s'])}, "
          f"gather {secs(r['gather_s'])} = {r['gather_share']:.1%} of a {r['local_steps']}-step round "
          f"({secs(r['round_s_extrapolated'])}, extrapolated); peak {'per GPU' if cuda else 'RSS per rank'} "
          f"{min(memory) / GIB:.1f}-{max(memory) / GIB:.1f} GiB{build}; run {r['wall_s']:.0f}s", flush=True)
    p = r.get("pipeline")
    if p:
        stages = ", ".join(f"{k} {secs(v)}" for k, v in p["seconds"].items())
        print(f"  pipeline ({p['codec']}): {size(p['fp32_bytes'])} fp32 delta -> {size(p['blob_bytes'])} "
              f"blob ({p['fp32_bytes'] / p['blob_bytes']:.2f}x smaller), relative error {p['relative_error']:.2e}; "
              f"accepted by the coordinator's checks; {stages}; total {secs(p['total_s'])} "
              f"(trainer side {secs(p['trainer_s'])}); rank 0 host peak {p['rank0_host_peak_bytes'] / GIB:.1f} GiB",
              flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=parse_ranks, default=[1, 2, 4, 8], help="GPU counts, e.g. 1,2,4,8 (the default)")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: a smoke run over Gloo")
    p.add_argument("--preset", default="1b", help="stdlib-lm preset: tiny, 125m, 350m, 1b, 8b")
    p.add_argument("--seq-len", type=int, help="bytes per sequence (default: the preset's; 2048 for 1b and 8b)")
    p.add_argument("--batch", type=int, default=8, help="sequences per micro-batch per GPU (constant: weak scaling)")
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps per round")
    p.add_argument("--warmup", type=int, default=3, help="steps of the untimed first round (compile, allocator)")
    p.add_argument("--repeats", type=int, default=2, help="timed rounds per N (medians reported)")
    p.add_argument("--local-steps", type=int, default=100, help="H: the round the gather's share is of")
    p.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="torch.compile each block (training.compile; CUDA only)")
    p.add_argument("--activation-checkpointing", action="store_true", help="training.activation_checkpointing")
    p.add_argument("--pipeline", action="store_true", help="then send the delta through the update path")
    p.add_argument("--codec", default="int8", help="the update codec of --pipeline (compression.update)")
    p.add_argument("--tmp-dir", type=Path, help="where --pipeline writes its blob (default: the system's temp dir)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per N")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args()

    import torch  # after argument errors: they need no torch

    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("multi_gpu: --device cuda needs CUDA GPUs (run it on the device machine), or --device cpu for a "
                  "smoke run", file=sys.stderr)
            return 2
        visible = torch.cuda.device_count()
        for n in [n for n in args.ranks if n > visible]:
            print(f"multi_gpu: skipping N={n}: only {visible} GPU{'s' if visible > 1 else ''} visible", flush=True)
        ranks = [n for n in args.ranks if n <= visible]
        if not ranks:
            print(f"multi_gpu: error: --ranks {','.join(map(str, args.ranks))} asks for more GPUs than the {visible} "
                  "visible", file=sys.stderr)
            return 2
        machine = f"{visible} GPUs visible"  # named by the workers: no CUDA context in this process
    else:
        ranks, machine = args.ranks, f"CPU, {os.cpu_count()} cores"
    print(f"multi_gpu: stdlib-lm {args.preset}, {args.batch} sequences per rank (GPU) per step, {args.precision}, "
          f"compile {'on' if args.compile and args.device == 'cuda' else 'off'}, N = {','.join(map(str, ranks))} on "
          f"{machine}; torch {torch.__version__}, Python {sys.version.split()[0]}", flush=True)
    results, failed = [], []
    with tempfile.TemporaryDirectory(prefix="prime-multigpu-") as tmp:
        for n in ranks:
            print(f"-- N={n}", flush=True)
            path = Path(tmp) / f"n{n}.json"
            started = time.monotonic()
            code = launch(n, args, path)
            if code != 0 or not path.exists():
                print(f"multi_gpu: N={n} failed (exit {code}); its output is above", file=sys.stderr)
                failed.append(n)
                continue
            results.append({**json.loads(path.read_text()), "wall_s": time.monotonic() - started})
    rows = summarize(results, args.local_steps)
    if rows:
        r0 = rows[0]
        machine = f"{machine}: {r0['gpu']}" if args.device == "cuda" else machine
        print(f"multi_gpu: {machine}; {r0['preset']} = {count(r0['params'])} params, seq {r0['seq_len']}, "
              f"{count(r0['flops_per_token'])} FLOP per token; medians of {args.repeats} rounds of {args.steps} steps")
    for row in rows:
        print_row(row)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "argv": sys.argv[1:], "failed": failed, "runs": rows},
                                        indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
