"""What a node knows about its peers: who is nearest, who is dead, how long replies take.

- :class:`ClosestRoutingTable` answers FIND_NODE with the k *closest* contacts it
  holds. ``kademlia``'s table returns the first k met while walking buckets left and
  right (bmuller/kademlia#28, #52), so replies near the end of a lookup can leave out
  the very nodes that hold a record, and a lookup can end among nodes that do not.
- :class:`DeadPeers` remembers peers that timed out, so lookups skip them when other
  peers still list them, instead of paying a timeout each time.
- :class:`RttEstimator` says when an unanswered request is *overdue* (TCP's RTO
  rule: smoothed RTT plus four deviations), so lookups and puts stop waiting on a
  peer long before the RPC timeout while a slow live peer still gets its chance.
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from typing import Any

from kademlia.node import Node
from kademlia.routing import RoutingTable

MAX_DEAD_PEERS = 4096  # bounded: peer ids arrive from the network
DEAD_PEER_TTL_S = 120.0
MIN_OVERDUE_S = 0.05  # below this, scheduling noise on a busy host looks like loss


class ClosestRoutingTable(RoutingTable):
    """``kademlia`` routing table whose neighbour queries return the truly closest contacts."""

    def find_neighbors(self, node: Node, k: int | None = None, exclude: Node | None = None) -> list[Node]:
        k = k or self.ksize
        index = self.get_bucket_for(node)
        if index is not None:
            self.buckets[index].touch_last_updated()  # as kademlia's traverser does (lonely buckets)
        contacts = [n for n in self.contacts() if n.id != node.id]
        if exclude is not None:
            contacts = [n for n in contacts if not n.same_home_as(exclude)]
        target = node.long_id
        return heapq.nsmallest(k, contacts, key=lambda n: n.long_id ^ target)

    def contacts(self) -> list[Node]:
        """Every contact held, in no particular order."""
        return [n for bucket in self.buckets for n in bucket.nodes.values()]

    def add_contact(self, node: Node) -> None:
        """kademlia's rule (split or ping the bucket's oldest), with the ping as a tracked task."""
        index = self.get_bucket_for(node)
        bucket = self.buckets[index]
        if bucket.add_node(node):
            return
        if bucket.has_in_range(self.node) or bucket.depth() % 5 != 0:
            self.split_bucket(index)
            self.add_contact(node)
        else:
            self.protocol.spawn(self.protocol.call_ping(bucket.head()))


class DeadPeers:
    """Ids of peers that timed out recently; forgotten on expiry or when the peer is heard from."""

    def __init__(self, ttl_s: float = DEAD_PEER_TTL_S, max_peers: int = MAX_DEAD_PEERS) -> None:
        self._ttl_s = ttl_s
        self._max = max_peers
        self._until: OrderedDict[bytes, float] = OrderedDict()

    def add(self, node_id: bytes) -> None:
        self._until.pop(node_id, None)
        self._until[node_id] = time.monotonic() + self._ttl_s
        while len(self._until) > self._max:
            self._until.popitem(last=False)

    def discard(self, node_id: bytes) -> None:
        self._until.pop(node_id, None)

    def __contains__(self, node_id: Any) -> bool:
        until = self._until.get(node_id)
        if until is None:
            return False
        if until < time.monotonic():
            del self._until[node_id]
            return False
        return True

    def __len__(self) -> int:
        return len(self._until)


class RttEstimator:
    """Round-trip times of answered RPCs; ``overdue_s`` is how long to wait before giving up on one."""

    def __init__(self, ceiling_s: float) -> None:
        self._ceiling = ceiling_s
        self._srtt: float | None = None
        self._rttvar = 0.0

    def observe(self, rtt_s: float) -> None:
        if self._srtt is None:
            self._srtt, self._rttvar = rtt_s, rtt_s / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - rtt_s)
            self._srtt = 0.875 * self._srtt + 0.125 * rtt_s

    @property
    def known(self) -> bool:
        """Whether any reply was timed yet (if not, ``overdue_s`` is the RPC timeout)."""
        return self._srtt is not None

    @property
    def overdue_s(self) -> float:
        if self._srtt is None:
            return self._ceiling
        return min(self._ceiling, max(MIN_OVERDUE_S, self._srtt + 4 * self._rttvar))
