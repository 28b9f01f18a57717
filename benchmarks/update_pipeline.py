"""Update pipeline: encode, digest, sign, transfer over loopback, verify and decode one update.

The path a trainer's update takes to the coordinator, with prime's own code at every
step, stage by stage:

  trainer      encode_parts (safetensors header + views of the tensors, no copy) →
               BlobStore.put_parts (SHA-256 digest while a helper thread writes and
               fsyncs, rename) → seal the signed update record (Ed25519)
  coordinator  open_envelope (verify signature) → fetch_verified from the trainer's
               BlobServer (a separate process, TCP over 127.0.0.1; received into memory,
               hashed while it arrives) → decode_state (tensors are views of the verified
               bytes); BlobStore.put_verified keeps a copy on disk in the background (the
               coordinator does not wait for it: printed apart, not in the totals)

Throughput = update bytes / seconds, compared in the same run with the hashing limit
(``hashlib.sha256`` over the same buffer: one pass of the hash the pipeline uses) and a
plain memory copy. Printed for each side (in a deployment trainer and coordinator are
different machines, and the coordinator's side is what every update of a round goes
through) and end to end. End to end, the trainer must hash before it signs and the
coordinator must hash what it receives, so one update's latency is at least two passes:
at most 0.5x the hashing limit by construction. Also prints the longest stall of the
coordinator's event loop during the transfer (a 1 ms ticker): hashing and disk I/O
belong off the loop.

    python benchmarks/update_pipeline.py [--params 25000000] [--repeats 3]
    python benchmarks/update_pipeline.py --params 100000000      # the 100M-parameter figure
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from prime.core import tensors
from prime.core.envelope import Domain, open_envelope, seal
from prime.core.identity import Identity
from prime.blobs.fetch import fetch_verified
from prime.blobs.service import BlobServer
from prime.blobs.store import BlobStore

MB = 1e6


def make_update(params: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A float32 delta of ``params`` values in 1024x1024 matrices (plus one remainder vector)."""
    g = torch.Generator().manual_seed(seed)
    block = 1024 * 1024
    state = {f"layers.{i}.weight": torch.randn(1024, 1024, generator=g) for i in range(params // block)}
    if params % block:
        state["tail.bias"] = torch.randn(params % block, generator=g)
    return state


def _serve(root: str, ready: "mp.connection.Connection") -> None:
    """Child process: the trainer's BlobServer over ``root`` until told to stop."""

    async def run() -> None:
        server = await BlobServer.start(BlobStore(root), max_blob_bytes=2**40)
        ready.send(server.address)
        await asyncio.get_running_loop().run_in_executor(None, ready.recv)
        await server.close()

    asyncio.run(run())


class LoopLag:
    """Longest delay of a 1 ms ticker on the running loop: how long the loop was blocked."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task | None = None

    async def _tick(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            self.worst = max(self.worst, time.perf_counter() - t - 0.001)

    def __enter__(self) -> "LoopLag":
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


class Laps:
    """Seconds per named stage, each timed from the end of the one before: ``lap("encode")``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._clock = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = now - self._clock
        self._clock = now

    def since_last(self) -> float:
        return time.perf_counter() - self._clock


async def one_pass(state: dict[str, torch.Tensor], trainer_store: BlobStore, coord_store: BlobStore,
                   address: tuple[str, int], identity: Identity) -> tuple[dict[str, float], float, str]:
    """Run the pipeline once; return per-stage seconds, the coordinator loop's worst stall, digest."""
    lap = Laps()

    # trainer
    parts = await asyncio.to_thread(tensors.encode_parts, state)
    lap("encode")
    digest = await asyncio.to_thread(trainer_store.put_parts, parts)
    lap("digest+store")
    size = tensors.parts_size(parts)
    record = seal(identity, Domain.UPDATE, {"blob_digest": digest, "blob_size": size, "round": 1}).to_bytes()
    lap("sign")
    # coordinator
    envelope = open_envelope(record, Domain.UPDATE, signer=identity.public_key)
    got = envelope.record["blob_digest"]
    lap("verify_signature")
    with LoopLag() as lag:
        data = await fetch_verified([address], got, coord_store, max_bytes=size)
    lap("transfer+verify")
    decoded = await asyncio.to_thread(tensors.decode_state, data, max_bytes=size)
    lap("decode")
    await asyncio.to_thread(coord_store.put_verified, got, data)
    background = {"persist": lap.since_last()}
    if decoded.keys() != state.keys() or not all(torch.equal(decoded[k], state[k]) for k in state):
        sys.exit("decoded update differs from the original")
    return lap.seconds, background, lag.worst, digest


def limits(buffer: bytes) -> tuple[float, float]:
    """Seconds of one SHA-256 pass and of one memory copy over ``buffer``."""
    src = np.frombuffer(buffer, dtype=np.uint8)
    dst = src.copy()  # fault the destination in once: time the copy, not the page allocator
    t = time.perf_counter()
    hashlib.sha256(buffer).digest()
    hashed = time.perf_counter() - t
    t = time.perf_counter()
    np.copyto(dst, src)
    return hashed, time.perf_counter() - t


TRAINER_STAGES = ("encode", "digest+store", "sign")
COORDINATOR_STAGES = ("verify_signature", "transfer+verify", "decode")


async def run(params: int, repeats: int) -> None:
    state = make_update(params)
    identity = Identity.generate()
    reference = tensors.encode_state(state)
    size = len(reference)
    runs: list[dict[str, float]] = []
    lags, hashes, copies, persists = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="prime-bench-") as tmp:
        trainer_root = Path(tmp) / "trainer"
        trainer_store = BlobStore(trainer_root)
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        server = ctx.Process(target=_serve, args=(str(trainer_root), child), daemon=True)
        server.start()
        address = parent.recv()
        try:
            for i in range(repeats):  # limits measured next to each pass: load drift hits both alike
                hashed, copied = limits(reference)
                hashes.append(hashed)
                copies.append(copied)
                coord_store = BlobStore(Path(tmp) / f"coordinator-{i}")
                stages, background, lag, digest = await one_pass(state, trainer_store, coord_store, address, identity)
                runs.append(stages)
                persists.append(background["persist"])
                lags.append(lag)
                # the next pass encodes and stores from scratch
                trainer_store.path(digest).unlink()
                coord_store.path(digest).unlink()
        finally:
            parent.send("stop")
            server.join(timeout=10)
    median = statistics.median
    hash_s, copy_s = median(hashes), median(copies)
    total = median([sum(r.values()) for r in runs])
    coordinator = median([sum(r[k] for k in COORDINATOR_STAGES) for r in runs])
    trainer = median([sum(r[k] for k in TRAINER_STAGES) for r in runs])
    print(f"update_pipeline: {params / 1e6:.0f}M float32 params = {size / MB:.1f} MB blob; "
          f"medians of {repeats} passes")
    for name in runs[0]:
        seconds = median([r[name] for r in runs])
        print(f"  {name:<17} {seconds * 1e3:8.1f} ms  {size / MB / seconds if seconds > 0 else float('inf'):9.0f} MB/s")
    print(f"  {'total':<17} {total * 1e3:8.1f} ms  {size / MB / total:9.0f} MB/s")
    persist = median(persists)
    print(f"  {'(persist)':<17} {persist * 1e3:8.1f} ms  {size / MB / persist:9.0f} MB/s  "
          "coordinator's disk copy, written in the background: not in the totals")
    print(f"  limits, same run: sha256 {hash_s * 1e3:.1f} ms ({size / MB / hash_s:.0f} MB/s), "
          f"memory copy {copy_s * 1e3:.1f} ms ({size / MB / copy_s:.0f} MB/s)")
    print(f"  coordinator event loop: longest stall during a transfer {max(lags) * 1e3:.1f} ms")
    limit = f"hashing limit {size / MB / hash_s:.0f} MB/s"
    print(f"update_pipeline (coordinator side: verify, fetch+hash, decode): prime {size / MB / coordinator:.0f} MB/s, "
          f"{limit}, ratio {hash_s / coordinator:.2f}x")
    print(f"update_pipeline (trainer side: encode, hash+store, sign): prime {size / MB / trainer:.0f} MB/s, "
          f"{limit}, ratio {hash_s / trainer:.2f}x")
    print(f"update_pipeline (end to end, one update; two hash passes in sequence, so at most 0.5x): "
          f"prime {size / MB / total:.0f} MB/s, {limit}, ratio {hash_s / total:.2f}x; "
          f"memory copy {size / MB / copy_s:.0f} MB/s, ratio {copy_s / total:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", type=int, default=25_000_000, help="float32 parameters in the update (default 25M)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    asyncio.run(run(args.params, args.repeats))


if __name__ == "__main__":
    main()
