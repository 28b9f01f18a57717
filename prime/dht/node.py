"""DHTNode: a Kademlia peer that stores, serves and returns only verified records.

Built on :class:`~prime.dht.server.PrimeServer` (``kademlia.Server`` with the
hardened protocol, validating storage and lookups that wait on no dead peer).
``put`` signs a small pointer record under the caller's key and returns once a
quorum of the closest live peers accepted it; ``get`` returns a value only after its
signature, owner, key and lifetime have been checked, whether it came from local
storage or from the network.
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

from kademlia.node import Node
from pydantic import BaseModel, ConfigDict, Field

from prime.core.errors import DHTError
from prime.core.identity import Identity
from prime.dht.crawling import VerifiedValueCrawl
from prime.dht.metrics import DHTMetrics
from prime.dht.records import DHTRecord, InvalidRecord, dht_digest, dht_key, make_record, validate_record
from prime.dht.server import PrimeServer
from prime.dht.storage import StorageConfig, ValidatingStorage

log = logging.getLogger(__name__)

Address = tuple[str, int]


class DHTConfig(BaseModel):
    """Kademlia parameters and storage bounds for one node."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ksize: int = Field(20, gt=0)
    alpha: int = Field(3, gt=0)
    #: a put returns once this many of the k closest live peers accepted (the rest finish in the background)
    store_quorum: int = Field(5, gt=0)
    default_ttl_s: float = Field(3600.0, gt=0)
    storage: StorageConfig = StorageConfig()


class DHTNode:
    """One peer of prime's DHT. Make with ``await DHTNode.create(...)``; close with ``close()``."""

    def __init__(self, server: PrimeServer, config: DHTConfig, address: Address) -> None:
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
        server = PrimeServer(config.ksize, config.alpha, config.store_quorum, storage, timeout)
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

        Returns once ``store_quorum`` of the k closest live peers accepted it (or one
        did and the rest are overdue); the remaining STOREs finish in the background.
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
        log.debug("put %s: %d of %d peers accepted so far", name, accepted, asked)
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
            crawl = VerifiedValueCrawl(protocol, dkey, nearest, self._config.ksize, self._config.alpha)
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
