"""The Kademlia server under a ``DHTNode``: joining, table refresh and replication.

``kademlia.Server`` with :class:`~prime.dht.protocol.ValidatingProtocol` and
:class:`~prime.dht.storage.ValidatingStorage` plugged in, and two changes that
matter at scale:

- lookups (joining's self-lookup, the hourly bucket refresh, puts) are
  :mod:`prime.dht.crawling`'s, which wait on no dead peer, over a routing table that
  answers with the truly closest contacts (:mod:`prime.dht.routing`). Together these
  made gets find every record at 1,024 nodes joined through 1-3 contacts. Refreshing
  every distance level on join as well (paper, section 2.3) was tried: no gain in
  found records, and 20x the join time at 1,024 nodes, so it is not done;
- a STORE goes to the k closest live peers, and returns as soon as ``quorum`` of them
  accepted (or one did and the rest are overdue); the other STOREs finish in the
  background as tracked tasks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from kademlia.network import Server
from kademlia.node import Node

from prime.dht.crawling import NodeCrawl
from prime.dht.protocol import Result, ValidatingProtocol
from prime.dht.storage import ValidatingStorage

log = logging.getLogger(__name__)

Address = tuple[str, int]


class PrimeServer(Server):
    """``kademlia.Server`` wired to prime's protocol, lookups and storage; background work is tracked."""

    protocol: ValidatingProtocol
    storage: ValidatingStorage

    def __init__(self, ksize: int, alpha: int, quorum: int, storage: ValidatingStorage, wait_timeout: float) -> None:
        super().__init__(ksize=ksize, alpha=alpha, storage=storage)
        self.quorum = quorum
        self._wait_timeout = wait_timeout

    def _create_protocol(self) -> ValidatingProtocol:
        return ValidatingProtocol(
            self.node, self.storage, self.ksize, wait_timeout=self._wait_timeout, metrics=self.storage.metrics
        )

    async def lookup(self, target: bytes, seeds: Iterable[Node] | None = None) -> list[Node]:
        """The k closest live peers to ``target``, starting from ``seeds`` or the routing table."""
        peers = list(seeds) if seeds is not None else self.protocol.router.find_neighbors(Node(target))
        return await NodeCrawl(self.protocol, target, peers, self.ksize, self.alpha).find()

    # -- joining and keeping the table fresh ---------------------------------------

    async def bootstrap(self, addrs: list[Address]) -> list[Node]:
        """Ping ``addrs``, then look ourselves up: our neighbours learn of us, and we of them."""
        seeds = [n for n in await asyncio.gather(*map(self.bootstrap_node, addrs)) if n is not None]
        if not seeds:
            return []
        return await self.lookup(self.node.id, seeds + self.protocol.router.find_neighbors(self.node))

    async def bootstrap_node(self, addr: Address) -> Node | None:
        ok, reply = await self.protocol.ping(addr, self.node.id)
        if ok and isinstance(reply, bytes) and len(reply) == 20:
            return Node(reply, addr[0], addr[1])
        return None

    def refresh_table(self, interval: float = 3600) -> None:
        self.protocol.spawn(self._refresh_table())
        self.refresh_loop = asyncio.get_running_loop().call_later(interval, self.refresh_table)

    async def _refresh_table(self) -> None:
        """Hourly (paper section 2.3): look up a random id in each lonely bucket, republish old records."""
        await asyncio.gather(*(self.lookup(rid) for rid in self.protocol.get_refresh_ids()))
        for dkey, value in self.storage.iter_older_than(3600):
            await self.set_digest(dkey, value)

    # -- replication -------------------------------------------------------------------

    async def store_at_closest(self, dkey: bytes, raw: bytes) -> tuple[int, int]:
        """STORE ``raw`` at the k closest live peers; return (accepted so far, asked)."""
        if not self.protocol.router.find_neighbors(Node(dkey)):
            return 0, 0
        targets = await self.lookup(dkey)
        if not targets:
            return 0, 0
        stores = [self.protocol.spawn(self.protocol.call_store(n, dkey, raw)) for n in targets]
        return await self._until_quorum(stores), len(targets)

    async def _until_quorum(self, stores: list[asyncio.Task[Result]]) -> int:
        """Count acceptances until ``quorum``, all replied, or one accepted and the rest are overdue."""
        loop = asyncio.get_running_loop()
        need = min(self.quorum, len(stores))
        overdue_at = loop.time() + self.protocol.rtt.overdue_s
        accepted, pending = 0, set(stores)
        while pending and accepted < need:
            timeout = max(0.0, overdue_at - loop.time()) if accepted else None
            done, pending = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not done:  # the rest are overdue; they finish (or time out) in the background
                break
            accepted += sum(1 for task in done if _accepted(task))
        return accepted

    async def set_digest(self, dkey: bytes, value: bytes) -> bool:
        """Used by the hourly republish; kademlia's version fails on an empty crawl."""
        self.storage.store(dkey, value)
        accepted, _ = await self.store_at_closest(dkey, value)
        return accepted > 0


def _accepted(task: asyncio.Task[Result]) -> bool:
    # kademlia's own set_digest counts (False, None) as success: a tuple is truthy
    if task.cancelled() or task.exception() is not None:
        return False
    ok, reply = task.result()
    return ok and reply is True

