"""What sealing state at rest costs: a checkpoint's bytes sealed and opened (SecretBox,
XSalsa20-Poly1305 in libsodium) against one SHA-256 pass over the same bytes (what an unsealed
checkpoint already pays for its digest), median of ``--repeats`` runs in one process.

    python benchmarks/sealing.py [--mib 64,256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from prime.sealing import Sealer, StateKey

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", default="64,256", help="sizes in MiB, comma-separated")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    sealer = Sealer(StateKey.generate())
    for mib in (int(m) for m in args.mib.split(",")):
        data = os.urandom(mib << 20)
        sealed = sealer.seal(data)
        sha = timed(lambda: hashlib.sha256(data).digest(), args.repeats)
        seal = timed(lambda: sealer.seal(data), args.repeats)
        opened = timed(lambda: sealer.open(sealed, "bench"), args.repeats)
        gb = len(data) / 1e9
        print(json.dumps({"mib": mib, "sha256_gb_s": round(gb / sha, 3), "seal_gb_s": round(gb / seal, 3),
                          "open_gb_s": round(gb / opened, 3), "seal_vs_sha256": round(sha / seal, 3),
                          "open_vs_sha256": round(sha / opened, 3),
                          "overhead_bytes": len(sealed) - len(data)}), flush=True)


if __name__ == "__main__":
    main()
