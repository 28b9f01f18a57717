"""DHT at scale: put/get latency (p50, p99, mean) and success rate, then with 10% of nodes killed.

N ``prime.dht.node.DHTNode``s (default 256; 64 and 1,024 by flag) run in this one
process on 127.0.0.1, each its own UDP socket, joined through random earlier nodes.
Then operations from random live nodes, one at a time while all are alive (pure
latency; every node shares this process's one core of Python), 8 at a time once nodes
are dead (dead-peer timeouts dominate then, not CPU):

  phase 1  ``--ops`` puts of signed pointer records (the size of a real update
           pointer), then a get of each from a random node
  kill     10% of the nodes (never the bootstrap) stop at once, without a goodbye:
           the survivors' routing tables still list them, so RPCs to them time out
  phase 2  gets of phase-1 records (stored before the kill), then new puts and gets

A put succeeds when at least one peer accepted it; a get when it returns exactly the
value put. Every value is a signed record verified on store and on get. RPC timeout
``--rpc-timeout`` (default 1 s) bounds what a dead peer costs a lookup.

The reference is hivemind's published figure (2021): 14.9 ms mean
store and 6.6 ms mean get with 1,024 peers on one machine. It is quoted, not measured
here: other machine, other workload.

    python benchmarks/dht_scale.py [--nodes 256] [--ops 100] [--concurrency 1] [--kill-concurrency 8]
    python benchmarks/dht_scale.py --nodes 64
    python benchmarks/dht_scale.py --nodes 1024
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import statistics
import time

from prime.core.errors import DHTError
from prime.core.identity import Identity
from prime.dht.node import DHTNode

HIVEMIND_STORE_MS, HIVEMIND_GET_MS = 14.9, 6.6


def summary(latencies: list[float], ok: int, total: int) -> str:
    if not latencies:
        return f"success {ok}/{total}"
    ms = sorted(x * 1e3 for x in latencies)
    p99 = ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))]
    return (f"p50 {statistics.median(ms):6.1f} ms  p99 {p99:7.1f} ms  mean {statistics.fmean(ms):6.1f} ms  "
            f"success {ok}/{total} ({100 * ok / total:.1f}%)")


class Workload:
    def __init__(self, nodes: list[DHTNode], rng: random.Random, concurrency: int) -> None:
        self.nodes = nodes
        self.concurrency = concurrency
        self.failed_puts = 0
        self.alive = list(nodes)
        self.rng = rng
        self.identities = [Identity.from_seed(bytes([i]) * 32) for i in range(1, 33)]
        self.records: list[tuple[Identity, str, dict]] = []

    def value(self, i: int) -> dict:
        """A pointer record the size of a real update pointer: digest, size, providers."""
        return {"digest": f"{i:064x}", "size": 100_000_000 + i, "providers": [f"127.0.0.1:{9000 + i % 1000}"]}

    async def _spread(self, jobs: list, run) -> None:
        """Run ``run(job)`` for every job, ``self.concurrency`` at a time."""
        queue = list(reversed(jobs))

        async def worker() -> None:
            while queue:
                await run(queue.pop())

        await asyncio.gather(*(worker() for _ in range(self.concurrency)))

    async def puts(self, count: int) -> tuple[list[float], int]:
        latencies: list[float] = []
        start = len(self.records) + self.failed_puts

        async def put(i: int) -> None:
            identity = self.rng.choice(self.identities)
            name, value = f"bench/record/{i}", self.value(i)
            node = self.rng.choice(self.alive)
            t = time.perf_counter()
            try:
                await node.put(identity, name, value, ttl_s=3600)
            except DHTError:
                self.failed_puts += 1
                return
            finally:
                latencies.append(time.perf_counter() - t)
            self.records.append((identity, name, value))

        before = len(self.records)
        await self._spread(list(range(start, start + count)), put)
        return latencies, len(self.records) - before

    async def gets(self, records: list[tuple[Identity, str, dict]]) -> tuple[list[float], int]:
        latencies: list[float] = []
        ok = 0

        async def get(record: tuple[Identity, str, dict]) -> None:
            nonlocal ok
            identity, name, value = record
            node = self.rng.choice(self.alive)
            t = time.perf_counter()
            got = await node.get(identity.public_key, name)
            latencies.append(time.perf_counter() - t)
            ok += got == value

        await self._spread(list(records), get)
        return latencies, ok


async def start_nodes(n: int, timeout: float, rng: random.Random) -> list[DHTNode]:
    nodes = [await DHTNode.create(timeout=timeout)]
    for i in range(1, n):
        peers = [nodes[0].address] + [rng.choice(nodes).address for _ in range(min(2, i))]
        nodes.append(await DHTNode.create(bootstrap=list(dict.fromkeys(peers)), timeout=timeout))
    return nodes


async def run(n: int, ops: int, rpc_timeout: float, seed: int, concurrency: int, kill_concurrency: int) -> None:
    rng = random.Random(seed)
    for name in ("prime.dht", "kademlia", "rpcudp"):  # dead peers are the point of phase 2: no warnings
        logging.getLogger(name).setLevel(logging.ERROR)
    t = time.perf_counter()
    nodes = await start_nodes(n, rpc_timeout, rng)
    joined = time.perf_counter() - t
    print(f"dht_scale: {n} DHTNodes in one process on 127.0.0.1 (k=20, alpha=3, RPC timeout {rpc_timeout:g} s), "
          f"joined in {joined:.1f} s; {ops} puts + {ops} gets per phase, {concurrency} in flight "
          f"({kill_concurrency} after the kill)")
    work = Workload(nodes, rng, concurrency)
    try:
        put_lat, put_ok = await work.puts(ops)
        before_kill = list(work.records)
        get_lat, get_ok = await work.gets(before_kill)
        print(f"  all alive      put  {summary(put_lat, put_ok, ops)}")
        print(f"  all alive      get  {summary(get_lat, get_ok, len(before_kill))}")

        victims = rng.sample(nodes[1:], k=max(1, n // 10))
        for node in victims:
            await node.close()
        work.alive = [node for node in nodes if node not in victims]
        work.concurrency = kill_concurrency  # dead-peer timeouts dominate now, not CPU
        old_lat, old_ok = await work.gets(before_kill)
        put2_lat, put2_ok = await work.puts(ops)
        new_records = work.records[len(before_kill):]
        get2_lat, get2_ok = await work.gets(new_records)
        print(f"  10% killed     get  {summary(old_lat, old_ok, len(before_kill))}  (records stored before the kill)")
        print(f"  10% killed     put  {summary(put2_lat, put2_ok, ops)}")
        print(f"  10% killed     get  {summary(get2_lat, get2_ok, len(new_records))}  (records stored after the kill)")
    finally:
        for node in nodes:
            await node.close()
    put_mean, get_mean = statistics.fmean(put_lat) * 1e3, statistics.fmean(get_lat) * 1e3
    print(f"  reference (published, not measured here): hivemind 2021, 1,024 peers on one machine: "
          f"store {HIVEMIND_STORE_MS} ms mean, get {HIVEMIND_GET_MS} ms mean")
    print(f"dht_scale ({n} nodes, all alive): prime put {put_mean:.1f} ms mean, hivemind (published) "
          f"{HIVEMIND_STORE_MS} ms, ratio {put_mean / HIVEMIND_STORE_MS:.2f}x; prime get {get_mean:.1f} ms mean, "
          f"hivemind (published) {HIVEMIND_GET_MS} ms, ratio {get_mean / HIVEMIND_GET_MS:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=256)
    p.add_argument("--ops", type=int, default=100, help="puts (and as many gets) per phase")
    p.add_argument("--rpc-timeout", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=1, help="operations in flight at once, all nodes alive")
    p.add_argument("--kill-concurrency", type=int, default=8, help="operations in flight once 10%% are dead")
    args = p.parse_args()
    asyncio.run(run(args.nodes, args.ops, args.rpc_timeout, args.seed, args.concurrency, args.kill_concurrency))


if __name__ == "__main__":
    main()
