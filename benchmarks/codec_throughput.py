"""Codec throughput against memcpy, compression ratio and reconstruction error, in one run.

For each tensor size, one float32 tensor (normal values, like a delta) is encoded by every
codec (``prime.codecs.encode``: the blob's pieces, as a trainer hashes and writes them) and its
blob decoded (``prime.codecs.decode`` of a writable buffer, as the coordinator decodes a
received blob; fp32's decode is a view, no copy). Throughput is GB/s of fp32 input (4 bytes a
value) for both directions, the median of ``--repeats`` runs; the references, measured in the
same run on the same tensor, are torch's memcpy: ``tensor.clone()`` and ``dst.copy_(tensor)``.
The ratio is fp32 bytes over blob bytes; the error is ``‖x − x̂‖ / ‖x‖`` and the largest
``|x − x̂|`` over the largest ``|x|``.

    python benchmarks/codec_throughput.py [--sizes 1000000,16000000,64000000] [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

GB = 1e9


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median seconds of ``fn()`` over ``repeats`` runs (after one warm-up), and its last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> None:
    from prime import codecs

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000000,16000000,64000000", help="float32 values per tensor")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--fraction", type=float, default=0.01, help="topk's fraction")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    chosen = [codecs.FP32(), codecs.FP16(), codecs.BF16(), codecs.Int8(block_size=256), codecs.Int8(block_size=64),
              codecs.UInt8(), codecs.TopK(fraction=args.fraction), codecs.TopK(fraction=0.1)]
    print(f"codecs: torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}; "
          "GB/s of fp32 input")
    print(f"  {'values':>10} {'codec':<20} {'encode GB/s':>11} {'decode GB/s':>11} {'ratio':>7} "
          f"{'rel L2 err':>10} {'max err/absmax':>14}")
    for n in (int(s) for s in args.sizes.split(",")):
        x = torch.randn(n, generator=torch.Generator().manual_seed(n)).mul_(1e-3)
        nbytes = x.numel() * 4
        dst = torch.empty_like(x)
        clone_s, _ = timed(x.clone, args.repeats)
        copy_s, _ = timed(lambda: dst.copy_(x), args.repeats)
        print(f"  {n:>10} {'memcpy: clone':<20} {nbytes / clone_s / GB:11.2f}")
        print(f"  {n:>10} {'memcpy: copy_':<20} {nbytes / copy_s / GB:11.2f}")
        norm, absmax = float(x.norm()), float(x.abs().max())
        for codec in chosen:
            state = {"x": x}
            encode_s, parts = timed(lambda: codecs.encode(codec, state), args.repeats)
            blob = bytearray(b"".join(parts))
            decode_s, out = timed(lambda: codecs.decode(blob, max_bytes=len(blob), max_decoded_bytes=nbytes,
                                                        expect=codec), args.repeats)
            err = (out["x"] - x)
            print(f"  {n:>10} {codec.describe():<20} {nbytes / encode_s / GB:11.2f} {nbytes / decode_s / GB:11.2f} "
                  f"{nbytes / len(blob):7.2f} {float(err.norm()) / norm:10.2e} "
                  f"{float(err.abs().max()) / absmax:14.2e}", flush=True)
            del parts, blob, out, err


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
