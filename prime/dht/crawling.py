"""Value lookup that trusts no peer: only verified records end a lookup.

``kademlia``'s ``ValueSpiderCrawl`` returns the most common value peers report, so a
few liars could answer for a key. This crawl validates each reported value as a
record for the key being looked up; invalid ones are counted and their senders
treated as if they had answered nothing. Among valid versions the newest wins.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kademlia.crawling import RPCFindResponse, ValueSpiderCrawl
from kademlia.node import Node

from prime.dht.protocol import ValidatingProtocol
from prime.dht.records import DHTRecord, InvalidRecord, validate_record

log = logging.getLogger(__name__)


class VerifiedValueCrawl(ValueSpiderCrawl):
    """Find the newest valid record stored under ``node.id`` (a dkey)."""

    protocol: ValidatingProtocol

    def __init__(
        self, protocol: ValidatingProtocol, node: Node, peers: list[Node], ksize: int, alpha: int
    ) -> None:
        super().__init__(protocol, node, peers, ksize, alpha)
        cfg = protocol.storage.config
        self._max_ttl_s, self._max_skew_s = cfg.max_ttl_s, cfg.max_skew_s

    async def find(self) -> DHTRecord | None:
        return await self._find(self.protocol.call_find_value)

    async def _nodes_found(self, responses: dict[bytes, Any]) -> DHTRecord | None:
        unreachable: list[bytes] = []
        found: list[DHTRecord] = []
        for peer_id, raw_response in responses.items():
            response = RPCFindResponse(raw_response)
            if not response.happened():
                unreachable.append(peer_id)
            elif response.has_value():
                record = self._verify(response.get_value())
                if record is None:
                    unreachable.append(peer_id)
                else:
                    found.append(record)
            else:
                peer = self.nearest.get_node(peer_id)
                if peer is not None:
                    self.nearest_without_value.push(peer)
                self.nearest.push(response.get_node_list())
        self.nearest.remove(unreachable)
        if found:
            newest = found[0]
            for record in found[1:]:
                if record.newer_than(newest):
                    newest = record
            await self._cache_at_nearest_without_value(newest)
            return newest
        if self.nearest.have_contacted_all():
            return None
        return await self.find()

    def _verify(self, value: Any) -> DHTRecord | None:
        try:
            return validate_record(self.node.id, value, time.time(), self._max_ttl_s, max_skew_s=self._max_skew_s)
        except InvalidRecord as exc:
            self.protocol.metrics.bad_values[exc.reason] += 1
            log.debug("peer returned an invalid record: %s", exc)
            return None

    async def _cache_at_nearest_without_value(self, record: DHTRecord) -> None:
        """Kademlia's lookup caching (paper section 2.3), with a verified record only."""
        peer = self.nearest_without_value.popleft()
        if peer is not None:
            await self.protocol.call_store(peer, self.node.id, record.raw)
