"""Local training throughput of the FSDP2 engine: samples/s on CPU and, where present, on CUDA.

Builds ``LocalEngine`` (``fully_shard`` per Linear and on the root, one-rank process group)
for the ``digits`` task's MLP and a wider one, trains a few epochs from a fixed start, and prints
samples/s per device with the CUDA/CPU ratio measured in the same run. Also checks the
engine's delta is finite and its loss falls, so a broken device path cannot pass silently.

    python benchmarks/engine_throughput.py [--epochs 5] [--hidden 2048,2048]
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time

import torch

from prime.core.config import parse_config
from prime.tasks import task_of
from prime.trainer.engine import LocalEngine, LocalWork


def measure(config, epochs: int) -> tuple[float, float, float]:
    engine = LocalEngine(task_of(config), config.training)
    engine.use_shard(0, 4)
    start = engine.global_state()
    engine.train(start, LocalWork(epochs=1))  # warm-up (CUDA context, allocator)
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    delta, metrics = engine.train(engine.global_state(), LocalWork(epochs=epochs))
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    assert all(bool(torch.isfinite(v).all()) for v in delta.values()), "non-finite delta"
    return metrics.num_samples / elapsed, metrics.loss, float("nan")


def run_device(device: str, epochs: int, wide: list[int]) -> None:
    """Measure on one device in this process; print ``RATE label device samples/s loss acc`` lines."""
    for label, hidden in (("digits MLP [128]", [128]), (f"wide MLP {wide}", wide)):
        config = parse_config({"task": {"name": "digits", "options": {"hidden": hidden}},
                               "data": {"num_shards": 4}, "training": {"batch_size": 64}})
        rate, loss, acc = measure(config, epochs)
        assert math.isfinite(loss)
        print(f"RATE\t{label}\t{device}\t{rate}\t{loss}\t{acc}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--hidden", default="2048,2048", help="wide MLP hidden sizes")
    p.add_argument("--device", choices=["cpu", "cuda"], help=argparse.SUPPRESS)  # internal: one device per process
    args = p.parse_args()
    wide = [int(h) for h in args.hidden.split(",")]
    if args.device:
        return run_device(args.device, args.epochs, wide)
    devices = (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]
    print(f"engine_throughput: torch {torch.__version__}, devices {devices}"
          + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else ""))
    rates: dict[tuple[str, str], float] = {}
    for device in devices:  # a fresh process per device: FSDP2 binds a process to one device type
        env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if device == "cpu" else {})}
        out = subprocess.run([sys.executable, __file__, "--device", device, "--epochs", str(args.epochs),
                              "--hidden", args.hidden], env=env, capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("RATE\t"):
                _, label, dev, rate, loss, acc = line.split("\t")
                rates[label, dev] = float(rate)
                print(f"  {label:<24} {dev:<5} {float(rate):>12,.0f} samples/s  (mean loss {float(loss):.3f})")
    for label in dict.fromkeys(label for label, _ in rates):
        if (label, "cuda") in rates:
            cuda, cpu = rates[label, "cuda"], rates[label, "cpu"]
            print(f"engine_throughput: {label}: cuda {cuda:,.0f} samples/s, cpu {cpu:,.0f} samples/s, "
                  f"ratio {cuda / cpu:.2f}x")


if __name__ == "__main__":
    main()
