"""Communication against quality with the same compute: per-step averaging, FedAvg, DiLoCo × codecs.

Every arm trains the tiny ``stdlib-lm`` (the demo job's recipe: AdamW, warmup + cosine) with N
trainers on the demo's non-IID shards (whole modules per trainer) for the same T inner steps per
trainer, and reports held-out bits per byte, bytes each trainer sent, and wall time:

- ``per-step`` averaging, the DDP equivalent: one engine on the union of the shards with N times
  the batch, T steps (averaging N gradients every step is one step on the N batches at once). A
  trainer sends its full fp32 gradient every step (counted as to a parameter server: P·4 bytes;
  a ring all-reduce sends 2(N−1)/N of that, more for N > 2, so the ratio below is conservative).
- ``fedavg``: H = --fedavg-h inner steps, the plain mean applied as is, fp32 updates.
- ``diloco``: H ∈ --h inner steps, the inner AdamW state kept by each trainer across rounds, the
  mean then the outer optimizer (SGD, Nesterov, lr 0.7, momentum 0.9), once per codec in --codecs.

The arms run in-process through prime's own parts: ``LocalEngine`` per trainer, the job's
``Strategy`` (``build_strategy``), the update codec with error feedback where it has one, and
the real encoded blob of every update (its size is what is counted; the coordinator's decode is
what is aggregated). Bytes sent are uplink only; every arm also downloads the model once per
round (P·4 bytes fp32), which per-step averaging does every step. Also printed: each codec's
encode and decode throughput against memcpy (``tensor.copy_``) on the model's own tensors.

    python benchmarks/diloco.py [--trainers 4] [--steps 500] [--h 10,50,100,500]
                                [--codecs fp32,fp16,bf16,int8,uint8,topk] [--jobs K] [--json PATH]

On a GPU, a larger preset (``--preset 350m --device cuda --precision bf16``): every engine and the
held-out evaluation run on the GPU, and per-step averaging accumulates the N trainers' micro-batches
(``gradient_accumulation`` = N, the same mean gradient) instead of one N-times-larger batch, which
would not fit in memory at this size.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prime import codecs  # noqa: E402
from prime.core.aggregation import build_strategy  # noqa: E402
from prime.core.aggregation.base import Contribution  # noqa: E402
from prime.core.config import JobConfig, parse_config  # noqa: E402
from prime.core.datasets import Split  # noqa: E402
from prime.core.tensors import parts_size  # noqa: E402
from prime.demo import demo_job  # noqa: E402
from prime.tasks import Shard, task_of  # noqa: E402
from prime.trainer.engine import LocalEngine, LocalWork  # noqa: E402

CODEC_PARAMS = {"int8": {"block_size": 256}, "topk": {"fraction": 0.1}}
MAX_BLOB = 1 << 31


#: Where and at what size the arms run (``main`` sets it from the command line; a worker process gets
#: it with its arm): the task's options, ``[training]`` keys, and the torch device.
SCALE: dict[str, Any] = {"options": {}, "training": {}, "device": "cpu"}


def job(trainers: int, steps: int, h: int, aggregation: dict[str, Any]) -> JobConfig:
    config = demo_job(trainers, max(1, steps // h), 1, "mqtt://127.0.0.1:1", "00" * 32, {}, task="stdlib-lm",
                      local_steps=h, federated={"aggregation": aggregation},
                      training={"scheduler": {"name": "cosine", "warmup_steps": 10, "t_max": steps, "eta_min": 3e-4},
                                **SCALE["training"]})
    if not SCALE["options"]:
        return config
    data = config.model_dump(mode="json", exclude_none=True)
    data["task"]["options"] = {**data["task"].get("options", {}), **SCALE["options"]}
    return parse_config(data, "diloco benchmark job")


def device() -> torch.device:
    return torch.device(SCALE["device"])


def evaluate(config: JobConfig, state: dict) -> float:
    task = task_of(config)
    model = task.build_model(config.training.seed)
    model.load_state_dict(state)
    with torch.autocast(device().type, torch.bfloat16, enabled=config.training.precision.value == "bf16"):
        return task.evaluate(model.to(device()), task.load_validation())["bits_per_byte"]


def per_step(trainers: int, steps: int) -> dict[str, Any]:
    started = time.monotonic()
    config = job(trainers, steps, steps, {"name": "fedavg"})
    task = task_of(config)
    recipe = config.training.model_dump(mode="json")
    larger = {"gradient_accumulation": trainers} if device().type == "cuda" else \
        {"batch_size": recipe["batch_size"] * trainers}
    training = parse_config({"training": {**recipe, **larger}}).training
    engine = LocalEngine(task, training, device=device())
    shards = [task.load_shard(Shard(i, trainers)) for i in range(trainers)]
    engine.use_data(Split(torch.cat([s.x for s in shards]), torch.cat([s.y for s in shards])))
    start = task.build_model(training.seed).state_dict()
    delta, _ = engine.train(start, LocalWork(steps=steps))
    engine.close()
    params = sum(t.numel() for t in start.values())
    return {"arm": "per-step", "h": 1, "codec": "fp32", "rounds": steps, "params": params,
            "bytes_per_trainer_round": params * 4, "bytes_per_trainer": params * 4 * steps,
            "bits_per_byte": evaluate(config, {k: start[k] + delta[k] for k in start}),
            "seconds": time.monotonic() - started}


def federated(arm: str, trainers: int, steps: int, h: int, codec_name: str) -> dict[str, Any]:
    started = time.monotonic()
    aggregation = {"name": "fedavg", **({"outer": "diloco"} if arm == "diloco" else {})}
    config = job(trainers, steps, h, aggregation)
    task = task_of(config)
    codec = codecs.build(codec_name, **CODEC_PARAMS.get(codec_name, {}))
    engines = []
    for i in range(trainers):
        engines.append(LocalEngine(task, config.training, device=device()))
        engines[-1].use_shard(i, trainers)
    feedback = [codecs.ErrorFeedback(codec) for _ in range(trainers)] if codec.error_feedback else None
    strategy = build_strategy(config.federated.aggregation)
    state = task.build_model(config.training.seed).state_dict()
    sent, curve, rounds = 0, [], max(1, steps // h)
    for _ in range(rounds):
        strategy.begin(state)
        for i, engine in enumerate(engines):
            delta, metrics = engine.train(state, LocalWork(steps=h))
            if feedback:
                parts, residual = feedback[i].encode(delta)
                feedback[i].adopt(residual)
            else:
                parts = codecs.encode(codec, delta)
            sent += parts_size(parts)
            decoded = codecs.decode(b"".join(parts), max_bytes=MAX_BLOB)
            strategy.add(Contribution(bytes([i]) * 32, decoded, metrics.num_samples))
        state = strategy.finish().state
        curve.append(evaluate(config, state))
    for engine in engines:
        engine.close()
    return {"arm": arm, "h": h, "codec": codec.describe(), "rounds": rounds,
            "params": sum(t.numel() for t in state.values()),
            "bytes_per_trainer_round": sent / trainers / rounds, "bytes_per_trainer": sent / trainers,
            "bits_per_byte": curve[-1], "curve": curve, "seconds": time.monotonic() - started}


def throughput(codec_names: list[str]) -> list[dict[str, Any]]:
    """Encode/decode GB/s of fp32 input on the model's tensors, against copy_ in the same run."""
    config = job(1, 1, 1, {"name": "fedavg"})
    state = {k: torch.randn_like(v) for k, v in task_of(config).build_model(0).state_dict().items()}
    nbytes = sum(t.numel() * 4 for t in state.values())

    def best(fn, repeats: int = 5) -> float:
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            fn()
            times.append(time.perf_counter() - began)
        return min(times)

    out = {k: torch.empty_like(v) for k, v in state.items()}
    memcpy = best(lambda: [out[k].copy_(v) for k, v in state.items()])
    rows = []
    for name in codec_names:
        codec = codecs.build(name, **CODEC_PARAMS.get(name, {}))
        blob = b"".join(codecs.encode(codec, state))
        enc = best(lambda: codecs.encode(codec, state))
        dec = best(lambda: codecs.decode(blob, max_bytes=MAX_BLOB))
        rows.append({"codec": codec.describe(), "ratio": nbytes / len(blob),
                     "encode_gbps": nbytes / enc / 1e9, "decode_gbps": nbytes / dec / 1e9,
                     "encode_vs_memcpy": memcpy / enc, "decode_vs_memcpy": memcpy / dec})
    return [{"codec": "memcpy", "gbps": nbytes / memcpy / 1e9, "bytes": nbytes}, *rows]


def _run(spec: tuple) -> dict[str, Any]:
    torch.set_num_threads(int(os.environ.get("DILOCO_THREADS", "1")))
    kind, scale, *args = spec
    SCALE.update(scale)
    return per_step(*args) if kind == "per-step" else federated(kind, *args)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trainers", type=int, default=4)
    p.add_argument("--steps", type=int, default=500, help="inner steps per trainer, every arm")
    p.add_argument("--h", default="10,50,100,500", help="DiLoCo inner steps per round")
    p.add_argument("--fedavg-h", type=int, default=50)
    p.add_argument("--codecs", default="fp32,fp16,bf16,int8,uint8,topk")
    p.add_argument("--codec-h", help="run the codecs other than fp32 only at these H (default: every H)")
    p.add_argument("--jobs", type=int, default=1, help="arms run in parallel processes (one thread each)")
    p.add_argument("--preset", default="tiny", help="stdlib-lm preset (tiny, 125m, 350m, 1b)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--batch-size", type=int, help="sequences per trainer micro-batch (default: the demo's, 16)")
    p.add_argument("--learning-rate", type=float, help="inner AdamW peak learning rate (default: the demo's)")
    p.add_argument("--validation-sequences", type=int, help="held-out windows (default: the demo's, 128)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    scale = {"device": args.device, "options": {"preset": args.preset}, "training": {"precision": args.precision}}
    if args.validation_sequences:
        scale["options"]["validation_sequences"] = args.validation_sequences
    if args.batch_size:
        scale["training"]["batch_size"] = args.batch_size
    if args.learning_rate:
        scale["training"]["learning_rate"] = args.learning_rate
    SCALE.update(scale)
    hs = [int(h) for h in args.h.split(",") if h]
    names = [c for c in args.codecs.split(",") if c]
    codec_hs = {int(h) for h in args.codec_h.split(",")} if args.codec_h else set(hs)
    specs = [("per-step", scale, args.trainers, args.steps),
             ("fedavg", scale, args.trainers, args.steps, args.fedavg_h, "fp32")]
    specs += [("diloco", scale, args.trainers, args.steps, h, c) for h in hs for c in names
              if c == "fp32" or h in codec_hs]
    started = time.monotonic()
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            results = list(pool.map(_run, specs))
    else:
        results = [_run(s) for s in specs]
    base = results[0]
    print(f"diloco: {args.preset} stdlib-lm on {args.device} ({args.precision}), {args.trainers} trainers x {args.steps} inner steps each, "
          f"{base['params']:,} params; held-out bits per byte; bytes = uplink per trainer")
    print(f"  {'arm':<9} {'H':>4} {'codec':<22} {'rounds':>6} {'bytes/round':>12} {'bytes total':>12} "
          f"{'vs per-step':>11} {'bits/byte':>9} {'vs per-step':>11} {'seconds':>8}")
    for r in results:
        r["bytes_reduction"] = base["bytes_per_trainer"] / r["bytes_per_trainer"]
        r["quality_gap"] = r["bits_per_byte"] / base["bits_per_byte"] - 1
        print(f"  {r['arm']:<9} {r['h']:>4} {r['codec']:<22} {r['rounds']:>6} {r['bytes_per_trainer_round']:>12,.0f} "
              f"{r['bytes_per_trainer']:>12,.0f} {r['bytes_reduction']:>10.0f}x {r['bits_per_byte']:>9.4f} "
              f"{r['quality_gap']:>+10.2%} {r['seconds']:>8.1f}")
    met = [r for r in results if r["bytes_reduction"] >= 100 and r["quality_gap"] <= 0.03]
    reached = ", ".join(f"H={r['h']} {r['codec']}" for r in met) or "not reached by any arm"
    print(f"target (>= 100x fewer bytes, bits/byte within 3% of per-step): {reached}")
    rows = throughput(names)
    print(f"codec throughput on the model's tensors ({rows[0]['bytes']:,} bytes fp32; memcpy "
          f"{rows[0]['gbps']:.2f} GB/s in the same run)")
    for r in rows[1:]:
        print(f"  {r['codec']:<22} ratio {r['ratio']:>6.1f}x  encode {r['encode_gbps']:>6.2f} GB/s "
              f"({r['encode_vs_memcpy']:.2f}x memcpy)  decode {r['decode_gbps']:>6.2f} GB/s "
              f"({r['decode_vs_memcpy']:.2f}x memcpy)")
    print(f"wall {time.monotonic() - started:.0f}s")
    if args.json:
        args.json.write_text(json.dumps({"arms": results, "throughput": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
