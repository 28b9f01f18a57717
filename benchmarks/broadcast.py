"""Model broadcast: 8 trainers fetch one model blob over loopback, origin-only and peer-assisted.

This process is the origin (the coordinator): it holds a 100 MB model blob (the
safetensors encoding of 25M float32 parameters; ``--size-mb 1000`` for 1 GB) in a
BlobStore and serves it with prime's BlobServer. Eight trainer processes, released
at the same instant, each fetch it into their own BlobStore (verified by digest as it
arrives, then written to disk). Broadcast time = first start to last verified copy; throughput = 8 × size /
that time. Modes, all in the same run:

  raw     the same bytes over plain TCP sockets (sendall from memory, recv_into a
          buffer; no hashing, no disk): the loopback limit of this machine
  origin  every trainer ``fetch_blob``s from the origin
  peers   ``prime.dht.swarm``: a trainer that holds the verified blob serves it
          (``serve_held``, 2 clients at a time) and announces itself in the DHT
          (``announce_provider``); fetchers look providers up (``find_providers``) and
          ``fetch_with_peers`` spreads over them, the origin last (origin serves 2 at
          a time, so the blob fans out as a tree)

Loopback has no per-link bandwidth, so the origin's upload is not a bottleneck there
and the two prime modes differ little. ``--uplink-mbit`` (default 1000) repeats both
with every node's upload capped at that rate (``BlobServer(max_bytes_per_second=…)``,
the origin's and each peer's), as on a real network where the coordinator's uplink is
the limit; ``--uplink-mbit 0`` skips that.

    python benchmarks/broadcast.py [--size-mb 100] [--trainers 8] [--uplink-mbit 1000]
    python benchmarks/broadcast.py --size-mb 1000          # the 1 GB figure
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from prime.core.identity import Identity
from prime.blobs.fetch import fetch_blob
from prime.blobs.service import BlobServer
from prime.blobs.store import BlobStore
from prime.dht.node import DHTNode
from prime.dht.swarm import announce_provider, fetch_with_peers, provider_lookup, serve_held

MB = 1e6
ORIGIN_CLIENTS_PEERS = 2
SEED_CLIENTS = 2


@dataclass(frozen=True)
class Job:
    index: int
    mode: str
    root: str
    digest: str
    size: int
    origin: tuple[str, int]
    dht_bootstrap: tuple[str, int] | None
    owners: list[bytes]
    rate: float | None


def trainer_seed(index: int) -> bytes:
    return index.to_bytes(4, "big") * 8


# -- trainer processes -----------------------------------------------------------------


def _raw_fetch(address: tuple[str, int], size: int) -> None:
    buf = bytearray(size)
    view = memoryview(buf)
    with socket.create_connection(address) as sock:
        got = 0
        while got < size:
            n = sock.recv_into(view[got:])
            if n == 0:
                raise ConnectionError(f"raw sender closed after {got} of {size} bytes")
            got += n


async def _trainer(job: Job, conn) -> None:
    loop = asyncio.get_running_loop()
    store = BlobStore(job.root)
    dht = None
    if job.mode == "peers":
        dht = await DHTNode.create(bootstrap=[job.dht_bootstrap], timeout=2.0)
    conn.send("ready")
    await loop.run_in_executor(None, conn.recv)  # go
    started = time.monotonic()
    seed: BlobServer | None = None
    if job.mode == "raw":
        await asyncio.to_thread(_raw_fetch, job.origin, job.size)
    elif job.mode == "origin":
        await fetch_blob(*job.origin, job.digest, store, max_bytes=job.size, timeout=30)
    else:
        assert dht is not None
        await fetch_with_peers(provider_lookup(dht, job.owners, job.digest), job.digest, store, origin=[job.origin],
                               max_bytes=job.size, timeout=30, deadline=600)
    finished = time.monotonic()
    if dht is not None:
        seed = await serve_held(store, max_clients=SEED_CLIENTS, max_bytes_per_second=job.rate, timeout=30)
        await announce_provider(dht, Identity.from_seed(trainer_seed(job.index)), job.digest, seed.address)
    conn.send((started, finished))
    await loop.run_in_executor(None, conn.recv)  # stop
    if seed is not None:
        conn.send(seed.metrics.served)
        await seed.close()
    else:
        conn.send(0)
    if dht is not None:
        await dht.close()


def trainer_main(job: Job, conn) -> None:
    asyncio.run(_trainer(job, conn))


# -- the origin (this process) ----------------------------------------------------------


class RawSender:
    """Plain TCP: every connection gets ``data`` with one ``sendall`` (a thread each)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.address = self._sock.getsockname()[:2]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._send, args=(conn,), daemon=True).start()

    def _send(self, conn: socket.socket) -> None:
        with conn:
            conn.sendall(self._data)

    def close(self) -> None:
        self._sock.close()


async def broadcast(mode: str, trainers: int, origin_store: BlobStore, digest: str, size: int, raw: RawSender,
                    rate: float | None, tmp: Path) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    max_clients = ORIGIN_CLIENTS_PEERS if mode == "peers" else 64
    server = await BlobServer.start(origin_store, max_blob_bytes=size, max_clients=max_clients,
                                    max_bytes_per_second=rate, timeout=30)
    boot = await DHTNode.create(timeout=2.0) if mode == "peers" else None
    owners = [Identity.from_seed(trainer_seed(i)).public_key for i in range(trainers)]
    ctx = mp.get_context("spawn")
    procs, conns = [], []
    run_dir = Path(tempfile.mkdtemp(prefix=f"{mode}-", dir=tmp))
    try:
        for i in range(trainers):
            parent, child = ctx.Pipe()
            job = Job(i, mode, str(run_dir / f"trainer-{i}"), digest, size,
                      raw.address if mode == "raw" else server.address,
                      boot.address if boot else None, owners, rate)
            proc = ctx.Process(target=trainer_main, args=(job, child), daemon=True)
            proc.start()
            procs.append(proc)
            conns.append(parent)
        for conn in conns:
            assert await loop.run_in_executor(None, conn.recv) == "ready"
        for conn in conns:
            conn.send("go")
        spans = [await loop.run_in_executor(None, conn.recv) for conn in conns]
        for conn in conns:
            conn.send("stop")
        peer_uploads = sum([await loop.run_in_executor(None, conn.recv) for conn in conns])
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
        await server.close()
        if boot is not None:
            await boot.close()
        shutil.rmtree(run_dir, ignore_errors=True)
    seconds = max(end for _, end in spans) - min(start for start, _ in spans)
    return {"seconds": seconds, "mb_s": trainers * size / MB / seconds,
            "origin_uploads": server.metrics.served if mode != "raw" else trainers, "peer_uploads": peer_uploads,
            "slowest_fetch": max(end - start for start, end in spans),
            "timeline": sorted((start - t0, end - t0) for t0 in [min(s for s, _ in spans)] for start, end in spans)}


def make_blob(size_mb: int) -> bytes:
    """The encoded model: safetensors of ``size_mb``/4 million float32 parameters."""
    import torch

    from prime.core.tensors import encode_state

    params = size_mb * 1_000_000 // 4
    g = torch.Generator().manual_seed(0)
    block = 1024 * 1024
    state = {f"layers.{i}.weight": torch.randn(block, generator=g) for i in range(params // block)}
    if params % block:
        state["tail"] = torch.randn(params % block, generator=g)
    return encode_state(state)


async def run(size_mb: int, trainers: int, uplink_mbit: float, timeline: bool) -> None:
    blob = make_blob(size_mb)
    size = len(blob)
    with tempfile.TemporaryDirectory(prefix="prime-bench-") as tmp_name:
        tmp = Path(tmp_name)
        origin_store = BlobStore(tmp / "origin")
        digest = await asyncio.to_thread(origin_store.put_bytes, blob)
        raw = RawSender(blob)
        rate = uplink_mbit * 1e6 / 8 if uplink_mbit > 0 else None
        plan = [("raw", None), ("origin", None), ("peers", None)]
        if rate:
            plan += [("origin", rate), ("peers", rate)]
        print(f"broadcast: {trainers} trainers fetch a {size / MB:.0f} MB model over 127.0.0.1 "
              f"(each verified by SHA-256 and written to disk; {len(os.sched_getaffinity(0))} cores)")
        print(f"  {'mode':<8} {'uplink':>10} {'seconds':>8} {'MB/s':>8} {'origin uploads':>15} {'peer uploads':>13}")
        results = {}
        try:
            for mode, cap in plan:
                r = await broadcast(mode, trainers, origin_store, digest, size, raw, cap, tmp)
                results[(mode, cap)] = r
                uplink = f"{uplink_mbit:.0f} Mbit/s" if cap else "loopback"
                print(f"  {mode:<8} {uplink:>10} {r['seconds']:>8.2f} {r['mb_s']:>8.0f} "
                      f"{r['origin_uploads']:>15} {r['peer_uploads']:>13}", flush=True)
                if timeline:
                    print("           done at: " + " ".join(f"{end:.2f}" for _, end in sorted(r["timeline"], key=lambda x: x[1])))
        finally:
            raw.close()
    rw, og, pe = results[("raw", None)], results[("origin", None)], results[("peers", None)]
    print(f"broadcast: prime {og['mb_s']:.0f} MB/s, raw socket {rw['mb_s']:.0f} MB/s, "
          f"ratio {og['mb_s'] / rw['mb_s']:.2f}x (loopback, {trainers} x {size / MB:.0f} MB)")
    print(f"broadcast (peer-assisted, loopback): prime {pe['mb_s']:.0f} MB/s, origin-only {og['mb_s']:.0f} MB/s, "
          f"ratio {pe['mb_s'] / og['mb_s']:.2f}x; origin uploaded {pe['origin_uploads']} of {trainers} copies")
    if rate:
        oc, pc = results[("origin", rate)], results[("peers", rate)]
        bound = trainers * size / rate
        print(f"broadcast ({uplink_mbit:.0f} Mbit/s uplinks): origin-only {oc['seconds']:.2f} s "
              f"(uplink bound {bound:.2f} s), peer-assisted {pc['seconds']:.2f} s, "
              f"ratio {oc['seconds'] / pc['seconds']:.2f}x; origin uploaded {pc['origin_uploads']} of {trainers}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mb", type=int, default=100)
    p.add_argument("--trainers", type=int, default=8)
    p.add_argument("--uplink-mbit", type=float, default=1000.0, help="per-node upload cap for the capped runs; 0: skip")
    p.add_argument("--timeline", action="store_true", help="print when each trainer had its verified copy")
    args = p.parse_args()
    asyncio.run(run(args.size_mb, args.trainers, args.uplink_mbit, args.timeline))


if __name__ == "__main__":
    main()
