"""Aggregation: prime strategies over 4 and 16 updates of 25M parameters vs a plain torch weighted sum.

Each strategy named in ``--strategies`` (default: FedAvg and the robust ones) runs
``begin`` → ``add`` per update → ``finish`` exactly as the coordinator drives it. The
reference, timed in the same run on the same tensors, is the plain weighted sum a
torch user would write, ``new = global + Σ n_i·Δ_i / Σ n_i`` (in-place ``add_`` with
``alpha``; no bookkeeping, no validation). Throughput counts the update bytes read; the
"max |diff|" column is against that weighted mean, so it is 0 only for mean strategies.

    python benchmarks/aggregation.py [--params 25000000] [--updates 4,16] [--repeats 9]
                                     [--strategies fedavg,fedmedian,fedtrimmedavg,krum,centeredclip]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from prime.core.aggregation import Contribution, build_strategy
from update_pipeline import make_update  # the same synthetic 1024x1024-block state (benchmarks/ is on sys.path)

MB = 1e6


def plain_weighted_sum(glob: dict[str, torch.Tensor], deltas: list[dict[str, torch.Tensor]],
                       samples: list[int]) -> dict[str, torch.Tensor]:
    total = sum(samples)
    out = {}
    for name, base in glob.items():
        acc = torch.zeros_like(base)
        for delta, n in zip(deltas, samples):
            acc.add_(delta[name], alpha=n)
        out[name] = acc.div_(total).add_(base)
    return out


def run_strategy(kind: str, glob: dict[str, torch.Tensor], deltas: list[dict[str, torch.Tensor]],
                 samples: list[int]) -> dict[str, torch.Tensor]:
    strategy = build_strategy(kind)
    strategy.begin(glob)
    for i, (delta, n) in enumerate(zip(deltas, samples)):
        strategy.add(Contribution(i.to_bytes(32, "big"), delta, n))
    return strategy.finish().state


def interleaved(fns: dict[str, object], repeats: int) -> tuple[dict[str, float], dict[str, dict]]:
    """Median seconds of each fn, run in turn ``repeats`` times (so load drifts hit all alike)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    results: dict[str, dict] = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            results.pop(name, None)  # let the previous result go before the next run allocates
            t = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}, results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", type=int, default=25_000_000)
    p.add_argument("--updates", default="4,16", help="comma-separated update counts (default 4,16)")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--strategies", default="fedavg,fedmedian,fedtrimmedavg,krum,centeredclip")
    args = p.parse_args()
    counts = [int(n) for n in args.updates.split(",")]
    glob = make_update(args.params, 0)
    deltas = [make_update(args.params, seed) for seed in range(1, max(counts) + 1)]
    samples = [int(n) for n in torch.randint(50, 500, (max(counts),), generator=torch.Generator().manual_seed(0))]
    update_mb = args.params * 4 / MB
    strategies = args.strategies.split(",")
    print(f"aggregation: {args.params / 1e6:.0f}M float32 params ({update_mb:.0f} MB) per update, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}; "
          f"strategies: {', '.join(strategies)}")
    lines = []
    for n in counts:
        fns = {"plain": lambda: plain_weighted_sum(glob, deltas[:n], samples[:n])}
        fns.update({kind: (lambda kind=kind: run_strategy(kind, glob, deltas[:n], samples[:n]))
                    for kind in strategies})
        seconds, results = interleaved(fns, args.repeats)
        ref_s, ref = seconds.pop("plain"), results.pop("plain")
        print(f"  {n:>2} updates  plain torch weighted sum {ref_s * 1e3:8.1f} ms  {n * update_mb / ref_s:7.0f} MB/s")
        for name, s in seconds.items():
            worst = max(float((results[name][k] - ref[k]).abs().max()) for k in glob)
            print(f"  {n:>2} updates  {name:<24} {s * 1e3:8.1f} ms  {n * update_mb / s:7.0f} MB/s  "
                  f"(max |diff| vs reference {worst:.1e})")
            lines.append(f"aggregation ({name}, {n} updates): prime {n * update_mb / s:.0f} MB/s, "
                         f"plain weighted sum {n * update_mb / ref_s:.0f} MB/s, ratio {ref_s / s:.2f}x")
        del results, ref
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
