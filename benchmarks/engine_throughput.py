"""Local training throughput of the FSDP2 engine: samples/s on CPU and, where present, on CUDA.

Builds ``LocalEngine`` (``fully_shard`` per Linear and on the root, one-rank process group)
for the digits MLP and a wider MLP, trains a few epochs from a fixed start, and prints
samples/s per device with the CUDA/CPU ratio measured in the same run. Also checks the
engine's delta is finite and its loss falls, so a broken device path cannot pass silently.

    python benchmarks/engine_throughput.py [--epochs 5] [--hidden 2048,2048]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from prime.core.config import parse_config
from prime.core.datasets import Split
from prime.trainer.data import load_local_data
from prime.trainer.engine import LocalEngine


def measure(config, data: Split, epochs: int) -> tuple[float, float, float]:
    engine = LocalEngine(config, data)
    start = engine.global_state()
    engine.train_epochs(start, 1)  # warm-up (CUDA context, allocator)
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    delta, metrics = engine.train_epochs(engine.global_state(), epochs)
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    assert all(bool(torch.isfinite(v).all()) for v in delta.values()), "non-finite delta"
    return epochs * len(data) / elapsed, metrics.loss, metrics.accuracy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--hidden", default="2048,2048", help="wide MLP hidden sizes")
    args = p.parse_args()
    data = load_local_data(parse_config({}).data, 0)
    wide = [int(h) for h in args.hidden.split(",")]
    # CUDA first: the one process group is created then, with NCCL for CUDA and Gloo for CPU tensors.
    devices = (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]
    print(f"engine_throughput: torch {torch.__version__}, devices {devices}"
          + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else ""))
    for label, hidden in (("digits MLP [128]", [128]), (f"wide MLP {wide}", wide)):
        config = parse_config({"model": {"hidden": hidden}, "training": {"batch_size": 64}})
        rates = {}
        for dev in devices:
            if dev == "cpu" and torch.cuda.is_available():
                # LocalEngine trains where distributed.device() points: hide CUDA for the CPU figure.
                real = torch.cuda.is_available
                torch.cuda.is_available = lambda: False  # type: ignore[assignment]
                try:
                    rates[dev], loss, acc = measure(config, data, args.epochs)
                finally:
                    torch.cuda.is_available = real  # type: ignore[assignment]
            else:
                rates[dev], loss, acc = measure(config, data, args.epochs)
            assert math.isfinite(loss)
            print(f"  {label:<24} {dev:<5} {rates[dev]:>12,.0f} samples/s  (last-epoch loss {loss:.3f}, acc {acc:.3f})")
        if "cuda" in rates:
            print(f"engine_throughput: {label}: cuda {rates['cuda']:,.0f} samples/s, cpu {rates['cpu']:,.0f} samples/s, "
                  f"ratio {rates['cuda'] / rates['cpu']:.2f}x")


if __name__ == "__main__":
    main()
