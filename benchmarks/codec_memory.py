"""Peak memory of aggregating compressed updates: streamed from their encoded form vs decoded first.

16 updates shaped like the ``stdlib-lm`` 350m preset (304M parameters; ``--params N`` keeps the
preset's tensors up to about N parameters for quick runs) are encoded in each ``--codecs`` codec
and written to files, which each measurement maps privately, as the coordinator's blob store
does. Each mode runs FedAvg (``begin`` → ``add`` per update → ``finish``) in a fresh process:

- ``streamed``: each update is ``prime.codecs.open_update`` of its blob, an ``EncodedUpdate``
  that decodes a tensor each time one is read, handed to the strategy as is (what the intake
  does for a streaming strategy);
- ``decoded``: every update decoded to float32 first and all held, then folded (what holding
  each decoded update until the round closes costs).

Memory is the process's anonymous RSS (``RssAnon``: heap, not the mapped blob files), sampled
every millisecond, minus the same process's baseline after the global model is built; ``VmHWM``
(peak RSS including mapped file pages) is shown too. A mode that cannot fit this machine's
memory is not run, and says so.

    python benchmarks/codec_memory.py [--params N] [--updates 16] [--codecs int8,topk] [--fraction 0.01]
"""

from __future__ import annotations

import argparse
import json
import math
import mmap
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

GB = 1e9


def shapes(params: int | None) -> dict[str, tuple[int, ...]]:
    """The 350m preset's tensors (built on the meta device), cut to about ``params`` if given."""
    from prime.tasks.transformer import PRESETS, Transformer

    with torch.device("meta"):
        model = Transformer(PRESETS["350m"])
    out, total = {}, 0
    for name, tensor in model.state_dict().items():
        if params is not None and total >= params and name.startswith("blocks."):
            continue
        out[name] = tuple(tensor.shape)
        total += tensor.numel()
    return out


def codec_of(name: str, fraction: float):
    from prime import codecs

    return codecs.TopK(fraction=fraction) if name == "topk" else codecs.build(name)


def write_blobs(directory: Path, layout: dict[str, tuple[int, ...]], codec, updates: int) -> list[Path]:
    from prime import codecs

    paths = []
    for i in range(updates):
        g = torch.Generator().manual_seed(i)
        delta = {name: torch.randn(shape, generator=g).mul_(1e-3) for name, shape in layout.items()}
        path = directory / f"{codec.name}-{i:02d}.blob"
        with open(path, "wb") as f:
            for part in codecs.encode(codec, delta):
                f.write(part)
        paths.append(path)
        del delta
    return paths


def _status(key: str) -> int:
    """A ``/proc/self/status`` field in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


class AnonPeak:
    """The highest ``RssAnon`` seen, sampled every millisecond in a thread."""

    def __init__(self) -> None:
        self.peak = _status("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _status("RssAnon"))
            time.sleep(0.001)

    def __enter__(self) -> "AnonPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status("RssAnon"))


def measure(mode: str, paths: list[str], layout: dict[str, tuple[int, ...]]) -> dict:
    """One mode, in this (fresh) process."""
    from prime import codecs
    from prime.core.aggregation import Contribution, build_strategy

    glob = {name: torch.zeros(shape) for name, shape in layout.items()}
    cap = sum(math.prod(s) for s in layout.values()) * 4
    maps = []
    for path in paths:
        with open(path, "rb") as f:
            maps.append(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY))  # private, as BlobStore.map_private
    strategy = build_strategy("fedavg")
    baseline = _status("RssAnon")
    started = time.perf_counter()
    with AnonPeak() as peak:
        strategy.begin(glob)
        updates = [codecs.open_update(memoryview(m), max_bytes=1 << 40, max_decoded_bytes=cap) for m in maps]
        if mode == "decoded":
            updates = [u.decoded() for u in updates]
        for i, update in enumerate(updates):
            strategy.add(Contribution(bytes([i]) * 32, update, 100 + i))
        result = strategy.finish()
    seconds = time.perf_counter() - started
    checksum = float(sum(float(t.double().sum()) for t in result.state.values()))
    return {"mode": mode, "baseline": baseline, "peak": peak.peak, "hwm": _status("VmHWM"), "seconds": seconds,
            "checksum": checksum}


def available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--params", type=int, help="cut the 350m preset to about this many parameters")
    p.add_argument("--updates", type=int, default=16)
    p.add_argument("--codecs", default="int8,topk")
    p.add_argument("--fraction", type=float, default=0.01, help="topk's fraction")
    p.add_argument("--workdir", type=Path, help="where the blobs go (default: a temporary directory)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    layout = shapes(args.params)
    if args.child:
        mode, *paths = json.loads(args.child)
        print(json.dumps(measure(mode, paths, layout)))
        return
    n = sum(math.prod(s) for s in layout.values())
    fp32 = n * 4
    print(f"codec memory: FedAvg over {args.updates} updates of {n / 1e6:.1f}M parameters "
          f"({len(layout)} tensors, the 350m preset's shapes; {fp32 / GB:.2f} GB each in fp32)")
    print(f"  {'codec':<20} {'blobs GB':>9} {'mode':<9} {'peak anon GB':>12} {'above base GB':>13} "
          f"{'VmHWM GB':>9} {'seconds':>8}")
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for name in args.codecs.split(","):
            codec = codec_of(name, args.fraction)
            paths = write_blobs(Path(tmp), layout, codec, args.updates)
            blob_bytes = sum(os.path.getsize(path) for path in paths)
            rows = {}
            for mode in ("streamed", "decoded"):
                need = (args.updates + 3) * fp32 if mode == "decoded" else 4 * fp32
                if need > available_bytes():
                    print(f"  {codec.describe():<20} {blob_bytes / GB:9.2f} {mode:<9} not run: needs about "
                          f"{need / GB:.1f} GB, {available_bytes() / GB:.1f} GB available")
                    continue
                cut = ["--params", str(args.params)] if args.params else []
                out = subprocess.run([sys.executable, __file__, *cut, "--child", json.dumps([mode, *map(str, paths)])],
                                     capture_output=True, text=True, check=True)
                row = rows[mode] = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"  {codec.describe():<20} {blob_bytes / GB:9.2f} {mode:<9} {row['peak'] / GB:12.2f} "
                      f"{(row['peak'] - row['baseline']) / GB:13.2f} {row['hwm'] / GB:9.2f} {row['seconds']:8.1f}",
                      flush=True)
            if len(rows) == 2:
                s, d = rows["streamed"], rows["decoded"]
                same = math.isclose(s["checksum"], d["checksum"], rel_tol=1e-9, abs_tol=1e-6)
                above = (d["peak"] - d["baseline"]) / (s["peak"] - s["baseline"])
                print(f"  {codec.describe():<20} decoded / streamed: {above:.1f}x "
                      f"above baseline, {d['peak'] / s['peak']:.1f}x peak anon; same aggregate: {same}")
            for path in paths:
                path.unlink()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
