"""Iterative Kademlia lookups that wait on no dead peer and trust no peer's value.

``kademlia``'s ``SpiderCrawl`` works in rounds and waits for every reply of a round,
so each dead peer met costs a whole RPC timeout. Here, as in the Kademlia paper and
hivemind, ``alpha`` requests stay in flight and each reply is used as it arrives. A
request unanswered for longer than the node's round-trip estimate is *overdue*: it
gives up its slot and stops holding the lookup open (a late answer is still used),
and when it finally times out the peer is marked dead for later lookups. A lookup
ends when the ``k`` closest peers that are neither failed nor overdue have answered;
once no unasked peer is closer than the best answer, the rest are asked at once.

``kademlia``'s value crawl returns the most common value peers report, so a few
liars could answer for a key. :class:`VerifiedValueCrawl` validates each value as a
record for the key looked up; invalid ones are counted and their senders treated as
unreachable.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections.abc import Iterable
from typing import Any

from kademlia.node import Node

from prime.dht.protocol import Result, ValidatingProtocol
from prime.dht.records import DHTRecord, InvalidRecord, validate_record

log = logging.getLogger(__name__)

NEW, ASKED, ANSWERED, FAILED = range(4)
MAX_QUERIES_PER_K = 8  # bounds a lookup that liars keep feeding "closer" contacts


class Crawl:
    """One lookup of ``target``; subclasses say which RPC to send and what a reply means."""

    def __init__(
        self, protocol: ValidatingProtocol, target: bytes, peers: Iterable[Node], ksize: int, alpha: int
    ) -> None:
        self.protocol = protocol
        self.target = Node(target)
        self.ksize, self.alpha = ksize, alpha
        self._ranked: list[tuple[int, bytes]] = []  # (distance, id), closest first
        self._nodes: dict[bytes, Node] = {}
        self._state: dict[bytes, int] = {}
        self._asked_at: dict[bytes, float] = {}
        self._pending: dict[asyncio.Task[Result], bytes] = {}
        self._queries = 0
        self._add(peers)

    async def _rpc(self, node: Node) -> Result:
        raise NotImplementedError

    def _on_answer(self, node_id: bytes, reply: Any) -> bool:
        """Use one answer; return True to end the lookup now."""
        raise NotImplementedError

    def _add(self, nodes: Iterable[Node]) -> None:
        own = self.protocol.source_node.id
        for node in nodes:
            if node.id in self._state or node.id == own:
                continue
            self._nodes[node.id] = node
            self._state[node.id] = FAILED if node.id in self.protocol.dead else NEW
            bisect.insort(self._ranked, (self.target.distance_to(node), node.id))

    def answered(self) -> list[Node]:
        """The k closest peers that answered, closest first."""
        return [self._nodes[i] for _, i in self._ranked if self._state[i] == ANSWERED][: self.ksize]

    def _window(self, overdue_before: float) -> list[bytes]:
        """The k closest peers still worth hearing from: not failed, not overdue."""
        window: list[bytes] = []
        for _, node_id in self._ranked:
            state = self._state[node_id]
            if state == FAILED or (state == ASKED and self._asked_at[node_id] <= overdue_before):
                continue
            window.append(node_id)
            if len(window) == self.ksize:
                break
        return window

    async def _crawl(self) -> None:
        """Keep ``alpha`` fresh requests in flight until the window has all answered."""
        while True:
            now, overdue_s = time.monotonic(), self.protocol.rtt.overdue_s
            window = self._window(now - overdue_s)
            if all(self._state[i] == ANSWERED for i in window):
                return
            fresh = [t for t, i in self._pending.items() if self._asked_at[i] > now - overdue_s]
            # no reply timed yet: ask the whole window rather than wait out the timeout on a few dead
            width = self.alpha if self._closing_in(window) and self.protocol.rtt.known else self.ksize
            for node_id in window:
                if len(fresh) >= width or self._queries >= MAX_QUERIES_PER_K * self.ksize:
                    break
                if self._state[node_id] == NEW:
                    fresh.append(self._ask(node_id, now))
            if not fresh:  # query budget spent
                return
            wake = min(self._asked_at[self._pending[t]] for t in fresh) + overdue_s - now
            done, _ = await asyncio.wait(self._pending, timeout=max(wake, 0.0), return_when=asyncio.FIRST_COMPLETED)
            stop = [self._settle(self._pending.pop(task), task) for task in done]
            if any(stop):
                return

    def _closing_in(self, window: list[bytes]) -> bool:
        """Whether some unasked peer is closer than every peer that answered.

        While so, ``alpha`` requests probe closer; once not, the rest of the window
        is asked at once (the paper's final round), as it can only confirm.
        """
        for node_id in window:
            state = self._state[node_id]
            if state == NEW:
                return True
            if state == ANSWERED:
                return False
        return False

    def _ask(self, node_id: bytes, now: float) -> asyncio.Task[Result]:
        self._state[node_id], self._asked_at[node_id] = ASKED, now
        self._queries += 1
        # a protocol task: a request still out when the lookup ends runs on to its
        # reply or timeout (that is how dead peers get marked), and is cancelled at close
        task = self.protocol.spawn(self._rpc(self._nodes[node_id]))
        self._pending[task] = node_id
        return task

    def _settle(self, node_id: bytes, task: asyncio.Task[Result]) -> bool:
        ok, reply = (False, None) if task.cancelled() or task.exception() is not None else task.result()
        if not ok:
            self._state[node_id] = FAILED
            return False
        self._state[node_id] = ANSWERED
        return self._on_answer(node_id, reply)


class NodeCrawl(Crawl):
    """Find the k closest live peers to ``target``."""

    async def find(self) -> list[Node]:
        await self._crawl()
        return self.answered()

    async def _rpc(self, node: Node) -> Result:
        return await self.protocol.call_find_node(node, self.target)

    def _on_answer(self, node_id: bytes, reply: Any) -> bool:
        self._add([Node(*contact) for contact in reply])
        return False


class VerifiedValueCrawl(Crawl):
    """Find a valid record stored under ``target`` (a dkey); None once the k closest lack it."""

    def __init__(
        self, protocol: ValidatingProtocol, target: bytes, peers: Iterable[Node], ksize: int, alpha: int
    ) -> None:
        super().__init__(protocol, target, peers, ksize, alpha)
        cfg = protocol.storage.config
        self._max_ttl_s, self._max_skew_s = cfg.max_ttl_s, cfg.max_skew_s
        self._found: DHTRecord | None = None
        self._holder: bytes | None = None

    async def find(self) -> DHTRecord | None:
        await self._crawl()
        if self._found is not None:
            self._cache_at_nearest_without_value(self._found)
        return self._found

    async def _rpc(self, node: Node) -> Result:
        return await self.protocol.call_find_value(node, self.target)

    def _on_answer(self, node_id: bytes, reply: Any) -> bool:
        if isinstance(reply, dict):
            record = self._verify(reply["value"])
            if record is None:
                self._state[node_id] = FAILED  # a liar counts as no answer
                return False
            if self._found is None or record.newer_than(self._found):  # answers that came together
                self._found, self._holder = record, node_id
            return True
        self._add([Node(*contact) for contact in reply])
        return False

    def _verify(self, value: Any) -> DHTRecord | None:
        try:
            return validate_record(self.target.id, value, time.time(), self._max_ttl_s, max_skew_s=self._max_skew_s)
        except InvalidRecord as exc:
            self.protocol.metrics.bad_values[exc.reason] += 1
            log.debug("peer returned an invalid record: %s", exc)
            return None

    def _cache_at_nearest_without_value(self, record: DHTRecord) -> None:
        """Kademlia's lookup caching (paper section 2.3), with a verified record, in the background."""
        lacking = [n for n in self.answered() if n.id != self._holder]
        if lacking:
            self.protocol.spawn(self.protocol.call_store(lacking[0], self.target.id, record.raw))
