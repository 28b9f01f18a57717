"""DHTNode: a Kademlia peer that stores, serves and returns only verified records.

Built on ``kademlia.Server`` with the hardened protocol and the validating storage
plugged in. ``put`` signs a small pointer record under the caller's key; ``get``
returns a value only after its signature, owner, key and lifetime have been checked,
whether it came from local storage or from the network.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import socket
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from kademlia.crawling import NodeSpiderCrawl
from kademlia.network import Server
from kademlia.node import Node
from pydantic import BaseModel, ConfigDict, Field

from prime.core.errors import DHTError
from prime.core.identity import Identity
from prime.dht.crawling import VerifiedValueCrawl
from prime.dht.metrics import DHTMetrics
from prime.dht.protocol import ValidatingProtocol
from prime.dht.records import DHTRecord, InvalidRecord, dht_digest, dht_key, make_record, validate_record
from prime.dht.storage import StorageConfig, ValidatingStorage

log = logging.getLogger(__name__)

Address = tuple[str, int]


class DHTConfig(BaseModel):
    """Kademlia parameters and storage bounds for one node."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ksize: int = Field(20, gt=0)
    alpha: int = Field(3, gt=0)
    default_ttl_s: float = Field(3600.0, gt=0)
    storage: StorageConfig = StorageConfig()


class _PrimeServer(Server):
    """``kademlia.Server`` wired to :class:`ValidatingProtocol`; background work is tracked."""

    protocol: ValidatingProtocol
    storage: ValidatingStorage

    def __init__(self, config: DHTConfig, storage: ValidatingStorage, wait_timeout: float) -> None:
        super().__init__(ksize=config.ksize, alpha=config.alpha, storage=storage)
        self._wait_timeout = wait_timeout

    def _create_protocol(self) -> ValidatingProtocol:
        return ValidatingProtocol(
            self.node, self.storage, self.ksize, wait_timeout=self._wait_timeout, metrics=self.storage.metrics
        )

    def refresh_table(self, interval: float = 3600) -> None:
        self.protocol.spawn(self._refresh_table())
        self.refresh_loop = asyncio.get_running_loop().call_later(interval, self.refresh_table)

    async def store_at_closest(self, dkey: bytes, raw: bytes) -> tuple[int, int]:
        """STORE ``raw`` at the k closest reachable peers; return (accepted, asked)."""
        nearest = self.protocol.router.find_neighbors(Node(dkey))
        if not nearest:
            return 0, 0
        targets: list[Node] = await NodeSpiderCrawl(self.protocol, Node(dkey), nearest, self.ksize, self.alpha).find()
        replies = await asyncio.gather(*(self.protocol.call_store(n, dkey, raw) for n in targets))
        # kademlia's own set_digest counts (False, None) as success: a tuple is truthy
        return sum(1 for ok, reply in replies if ok and reply is True), len(targets)

    async def set_digest(self, dkey: bytes, value: bytes) -> bool:
        """Used by kademlia's hourly republish; kademlia's version fails on an empty crawl."""
        self.storage.store(dkey, value)
        accepted, _ = await self.store_at_closest(dkey, value)
        return accepted > 0

    async def bootstrap_node(self, addr: Address) -> Node | None:
        ok, reply = await self.protocol.ping(addr, self.node.id)
        if ok and isinstance(reply, bytes) and len(reply) == 20:
            return Node(reply, addr[0], addr[1])
        return None


class DHTNode:
    """One peer of prime's DHT. Make with ``await DHTNode.create(...)``; close with ``close()``."""

    def __init__(self, server: _PrimeServer, config: DHTConfig, address: Address) -> None:
        self._server = server
        self._config = config
        self._address = address
        self._closed = False

    @classmethod
    async def create(
        cls,
        host: str = "127.0.0.1",
        port: int = 0,
        bootstrap: Iterable[Address] = (),
        *,
        timeout: float = 5.0,
        config: DHTConfig | None = None,
    ) -> "DHTNode":
        """Listen on ``host:port`` (UDP; loopback unless told otherwise) and join via ``bootstrap``.

        ``timeout`` is how long one RPC waits for a reply. Unreachable bootstrap peers
        are logged, not fatal: a node may start before its peers; call
        :meth:`bootstrap` again later.
        """
        config = config or DHTConfig()
        storage = ValidatingStorage(config.storage, DHTMetrics())
        server = _PrimeServer(config, storage, timeout)
        try:
            await server.listen(port, interface=host)
        except OSError as exc:
            server.stop()
            raise DHTError(f"cannot listen for DHT traffic on {host}:{port}: {exc}") from None
        sockname = server.transport.get_extra_info("sockname")
        node = cls(server, config, (sockname[0], sockname[1]))
        peers = list(bootstrap)
        if peers and await node.bootstrap(peers) == 0:
            log.warning("DHT node %s:%d reached none of its bootstrap peers %s", *node.address, peers)
        return node

    # -- properties ---------------------------------------------------------------

    @property
    def address(self) -> Address:
        return self._address

    @property
    def node_id(self) -> bytes:
        return self._server.node.id

    @property
    def storage(self) -> ValidatingStorage:
        return self._server.storage

    @property
    def metrics(self) -> dict[str, Any]:
        """Snapshot: records held, bytes, accepted, refused/dropped/bad_values by reason."""
        storage = self._server.storage
        return storage.metrics.snapshot(records=len(storage), bytes=storage.total_bytes, peers=len(self.peers))

    @property
    def peers(self) -> list[Address]:
        """Contacts in the routing table nearest to this node."""
        return [(n.ip, n.port) for n in self._server.protocol.router.find_neighbors(self._server.node)]

    # -- operations -----------------------------------------------------------------

    async def bootstrap(self, addrs: Iterable[Address]) -> int:
        """Contact ``addrs`` (host names are resolved here) and crawl; return the peer count."""
        resolved = [await _resolve(host, port) for host, port in addrs]
        await self._server.bootstrap([a for a in resolved if a is not None and a != self._address])
        return len(self.peers)

    async def put(self, identity: Identity, name: str, value: dict[str, Any], ttl_s: float | None = None) -> None:
        """Sign ``value`` as ``identity``'s record ``name`` and store it at the closest peers.

        Raises ``DHTError`` if the record is unfit (too large, bad name or TTL) or no
        peer accepted it. A node without peers keeps it locally and succeeds.
        """
        ttl = self._config.default_ttl_s if ttl_s is None else ttl_s
        now = time.time()
        raw = make_record(identity, name, value, ttl, now=now)
        dkey = dht_digest(dht_key(identity.public_key, name))
        cfg = self._config.storage
        try:  # fail here, with the reason, rather than have every peer refuse silently
            validate_record(dkey, raw, now, cfg.max_ttl_s, max_skew_s=cfg.max_skew_s)
        except InvalidRecord as exc:
            raise DHTError(f"record {name!r} would be refused by peers: {exc}") from None
        kept = self.storage.store(dkey, raw)  # the publisher serves its own records too
        if not self._server.protocol.router.find_neighbors(Node(dkey)):
            if not kept:
                raise DHTError(f"record {name!r} refused by local storage ({self.storage.last_refusal})")
            return
        accepted, asked = await self._server.store_at_closest(dkey, raw)
        log.debug("put %s: %d of %d peers accepted", name, accepted, asked)
        if accepted == 0:
            raise DHTError(
                f"no peer accepted record {name!r} ({asked} reachable peers asked; "
                "check that peers are up and clocks agree)"
            )

    async def get_record(self, owner: bytes, name: str) -> DHTRecord | None:
        """The newest verified record ``owner`` published as ``name`` (local or network)."""
        dkey = dht_digest(dht_key(owner, name))
        local = self.storage.get_record(dkey)
        protocol = self._server.protocol
        nearest = protocol.router.find_neighbors(Node(dkey))
        remote = None
        if nearest:
            crawl = VerifiedValueCrawl(protocol, Node(dkey), nearest, self._config.ksize, self._config.alpha)
            remote = await crawl.find()
        if local is None or (remote is not None and remote.newer_than(local)):
            return remote
        return local

    async def get(self, owner: bytes, name: str) -> dict[str, Any] | None:
        """The verified value of ``owner``'s record ``name``; None if absent or unreachable."""
        record = await self.get_record(owner, name)
        # a copy: the stored record is shared, and callers may mutate what they get
        return copy.deepcopy(record.value) if record is not None else None

    async def close(self) -> None:
        """Stop listening, answer pending calls with 'no reply', stop background tasks."""
        if self._closed:
            return
        self._closed = True
        self._server.stop()
        if self._server.protocol is not None:
            await self._server.protocol.shutdown()

    async def __aenter__(self) -> "DHTNode":
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


async def _resolve(host: str, port: int) -> Address | None:
    """Host name to IP literal without blocking the loop (kademlia needs literals)."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as exc:
        log.warning("cannot resolve DHT peer %s:%s: %s", host, port, exc)
        return None
    if not infos:
        return None
    sockaddr = infos[0][4]
    return (str(sockaddr[0]), int(sockaddr[1]))
