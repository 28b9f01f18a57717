"""How a trainer gets each round's model when it did not ride inline in the announcement:
from the coordinator, or peer-assisted when it is large.

A model under ``network.peer_assist_min_bytes`` comes straight from the announcement's
providers (the coordinator), with no DHT lookups: for a small model a lookup costs more
than the transfer. A larger one is fetched with :func:`prime.dht.swarm.fetch_with_peers`:
other selected trainers that already hold it first, in random order, the coordinator
last. The trainer then serves its verified copy from its own blob server, a few fetchers
at a time, and announces itself as a provider in the DHT (signed, owner-bound), so the
model fans out as a tree and the coordinator uploads a few copies instead of one per trainer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine

from prime.core.config import JobConfig
from prime.core.errors import DHTError
from prime.core.identity import Identity
from prime.core.net import parse_hostport
from prime.core.records import RoundAnnouncement
from prime.core.retry import with_retries
from prime.blobs.fetch import fetch_verified, received
from prime.dht.peer import Peer
from prime.observability.progress import transfer_progress
from prime.dht.swarm import DEFAULT_SEED_CLIENTS, announce_provider, fetch_with_peers, provider_lookup

log = logging.getLogger(__name__)

#: Other trainers' provider records asked per lookup pass: bounds DHT gets in a large round.
OWNERS_PER_LOOKUP = 16
#: Longest a fetch waits on one provider lookup (one dead DHT node on the path costs a whole RPC timeout).
LOOKUP_TIMEOUT_S = 1.0


class ModelFetcher:
    """Fetches announced models and counts where each came from (``inline`` is counted by the node)."""

    def __init__(self, peer: Peer, identity: Identity, config: JobConfig,
                 spawn: Callable[[Coroutine], object]) -> None:
        self.peer = peer
        self.identity = identity
        self.config = config
        self._spawn = spawn  # runs the provider announcement in the background
        #: from_origin / from_peer / already_held per model; provider lookups (and timeouts), announcements
        self.counts: Counter[str] = Counter()

    async def fetch(self, ann: RoundAnnouncement) -> memoryview:
        """The verified bytes of the model ``ann`` names; raises ``BlobError`` if no provider delivered it."""
        async with transfer_progress(f"fetching model v{ann.model_version}", ann.model_size,
                                     lambda: received.total):
            if self.config.network.peer_assists(ann.model_size):
                return await self._fetch_peer_assisted(ann)
            return await self._fetch_from_coordinator(ann)

    async def _fetch_from_coordinator(self, ann: RoundAnnouncement) -> memoryview:
        """Into memory only: nobody fetches a small model from a trainer, so it is not stored."""
        net = self.config.network
        held = self.peer.blobs.has(ann.model_digest)
        providers = [parse_hostport(p) for p in ann.providers]
        data = await with_retries(
            lambda: fetch_verified(providers, ann.model_digest, self.peer.blobs,
                                   max_bytes=net.max_message_size, timeout=net.timeout),
            what=f"fetching model v{ann.model_version}", max_retries=self.config.fault_tolerance.max_retries,
        )
        self.counts["already_held" if held else "from_origin"] += 1
        return data

    async def _fetch_peer_assisted(self, ann: RoundAnnouncement) -> memoryview:
        net, digest = self.config.network, ann.model_digest
        others = [key for key in ann.selected if key != self.identity.public_key]
        lookup = provider_lookup(self.peer.dht, others, digest, sample=OWNERS_PER_LOOKUP)

        async def bounded_lookup() -> list[tuple[str, int]]:
            self.counts["provider_lookups"] += 1
            try:
                async with asyncio.timeout(min(net.timeout, LOOKUP_TIMEOUT_S)):
                    return await lookup()
            except TimeoutError:  # an unresponsive DHT node on the path: try the origin, ask again next pass
                self.counts["provider_lookup_timeouts"] += 1
                return []

        origin = [parse_hostport(p) for p in ann.providers]
        _, source = await fetch_with_peers(
            bounded_lookup, digest, self.peer.blobs, origin=origin, exclude=[self.peer.address],
            max_bytes=min(net.max_message_size, ann.model_size),  # a peer can waste no more than the model's size
            timeout=net.timeout, deadline=max(1.0, ann.deadline - time.time()),
        )
        self.counts["already_held" if source is None else "from_origin" if source in origin else "from_peer"] += 1
        self.peer.blob_server.limit_uploads(digest, DEFAULT_SEED_CLIENTS)
        self._spawn(self._announce(digest, ann.round))
        # Just verified as it arrived, unless it was already here (then checked again).
        return await asyncio.to_thread(self.peer.blobs.map_private, digest, verify=source is None)

    async def _announce(self, digest: str, round_number: int) -> None:
        """Say in the DHT that we serve ``digest``; a failure only costs other trainers a peer."""
        ttl = 2 * self.config.federated.round_timeout
        try:
            await announce_provider(self.peer.dht, self.identity, digest, self.peer.address, ttl_s=ttl)
            self.counts["provider_announcements"] += 1
        except DHTError as exc:
            log.info("round %d: not announced as a model provider: %s", round_number, exc)

    def metrics(self) -> dict[str, int]:
        return dict(self.counts)
