"""Kademlia over UDP, hardened: every datagram is checked before anything acts on it.

``rpcudp`` decodes datagrams inside fire-and-forget tasks, so garbage raises
"Task exception was never retrieved", and it dispatches any ``rpc_*`` name with any
arguments. Here a datagram is decoded with prime's bounded decoder, checked against
a fixed table of RPCs with their argument types, and dispatched synchronously (all
Kademlia handlers are synchronous). Anything malformed is dropped and counted under
``metrics.dropped[reason]``. Replies from peers are checked the same way before the
crawlers see them, and a peer that answers nonsense is treated as unreachable.

Every answered call feeds the round-trip estimate and every unanswered one marks the
peer dead (:mod:`prime.dht.routing`), so lookups learn whom not to wait for.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any

import msgpack
from kademlia.node import Node
from kademlia.protocol import KademliaProtocol

from prime.core import encoding
from prime.core.errors import DecodeError
from prime.dht.metrics import DHTMetrics
from prime.dht.routing import ClosestRoutingTable, DeadPeers, RttEstimator
from prime.dht.storage import ValidatingStorage

log = logging.getLogger(__name__)

REQUEST, RESPONSE = b"\x00", b"\x01"
_HEADER = 21  # kind byte + 20-byte message id
MAX_DATAGRAM_BYTES = 65_507

_ID = "id"  # 20-byte node id or key digest
_BYTES = "bytes"
#: The only RPCs a peer may call, with their argument kinds (after the sender).
RPCS: dict[str, tuple[str, ...]] = {
    "ping": (_ID,),
    "stun": (),
    "store": (_ID, _ID, _BYTES),
    "find_node": (_ID, _ID),
    "find_value": (_ID, _ID),
}

Result = tuple[bool, Any]
_NO_ANSWER: Result = (False, None)


class ValidatingProtocol(KademliaProtocol):
    """``KademliaProtocol`` that drops and counts malformed traffic instead of crashing."""

    storage: ValidatingStorage

    def __init__(
        self,
        source_node: Node,
        storage: ValidatingStorage,
        ksize: int,
        *,
        wait_timeout: float = 5.0,
        metrics: DHTMetrics | None = None,
    ) -> None:
        super().__init__(source_node, storage, ksize)
        self.router = ClosestRoutingTable(self, ksize, source_node)
        self._wait_timeout = wait_timeout
        self.metrics = metrics or storage.metrics
        self.rtt = RttEstimator(ceiling_s=wait_timeout)
        self.dead = DeadPeers()
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- inbound ---------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reason = self._handle_datagram(data, addr)
        if reason is not None:
            self.metrics.dropped[reason] += 1
            log.debug("dropped datagram from %s: %s", addr, reason)

    def _handle_datagram(self, datagram: bytes, addr: tuple[str, int]) -> str | None:
        """Act on one datagram; return a drop reason, or None if it was handled."""
        if len(datagram) < _HEADER + 1:
            return "too_short"
        kind, msg_id = datagram[:1], datagram[1:_HEADER]
        if kind not in (REQUEST, RESPONSE):
            return "unknown_kind"
        try:
            data = encoding.unpack(datagram[_HEADER:], max_bytes=MAX_DATAGRAM_BYTES)
        except DecodeError:
            return "bad_msgpack"
        if kind == RESPONSE:
            return self._accept_reply(msg_id, data)
        return self._dispatch(msg_id, data, addr)

    def _accept_reply(self, msg_id: bytes, data: Any) -> str | None:
        pending = self._outstanding.pop(msg_id, None)
        if pending is None:
            return "unsolicited_response"
        future, timer = pending
        timer.cancel()
        if not future.done():
            future.set_result((True, data))
        return None

    def _dispatch(self, msg_id: bytes, data: Any, addr: tuple[str, int]) -> str | None:
        if not (isinstance(data, list) and len(data) == 2 and isinstance(data[0], str) and isinstance(data[1], list)):
            return "bad_shape"
        name, args = data
        kinds = RPCS.get(name)
        if kinds is None:
            return "unknown_rpc"
        if len(args) != len(kinds):
            return "bad_arity"
        if not all(_is_kind(arg, kind) for arg, kind in zip(args, kinds)):
            return "bad_args"
        handler: Callable[..., Any] = getattr(self, f"rpc_{name}")
        try:
            response = handler(addr, *args)
        except Exception:  # a bug of ours must not take the node down; count it and say where
            log.warning("rpc_%s from %s raised", name, addr, exc_info=True)
            return "handler_error"
        if self.transport is not None and not self.transport.is_closing():
            # msgpack's C packer: replies of 20 contacts are most of a busy node's encoding work
            self.transport.sendto(RESPONSE + msg_id + msgpack.packb(response, use_bin_type=True), addr)
        return None

    def rpc_store(self, sender: tuple[str, int], nodeid: bytes, key: bytes, value: bytes) -> bool:
        """Keep the record only if valid; welcome the sender only if it sent something valid."""
        if not self.storage.store(key, value):
            return False
        self.welcome_if_new(Node(nodeid, sender[0], sender[1]))
        return True

    def welcome_if_new(self, node: Node) -> None:
        """Kademlia's hand-over of stored records to a newcomer, with tracked tasks.

        Same rule as ``kademlia`` (paper section 2.5), but the record's position is its
        dkey (kademlia hashes the dkey a second time) and send tasks are kept, so
        none is garbage-collected mid-flight or left pending at close.
        """
        self.dead.discard(node.id)  # it just spoke to us
        if not self.router.is_new_node(node):
            return
        records = list(self.storage)
        if records:  # the flat contact list once, not a neighbour search per record
            contacts = [c.long_id for c in self.router.contacts()]
            for dkey, value in records:
                if _hands_over(self.source_node.long_id, node.long_id, Node(dkey).long_id, contacts, self.router.ksize):
                    self.spawn(self.call_store(node, dkey, value))
        self.router.add_contact(node)

    # -- outbound: replies are checked before the crawlers use them ---------------

    def _timeout(self, msg_id: bytes) -> None:
        """A peer that does not answer is routine in a P2P network: debug, not error."""
        pending = self._outstanding.pop(msg_id, None)
        if pending is not None and not pending[0].done():
            log.debug("no reply within %.1fs", self._wait_timeout)
            pending[0].set_result(_NO_ANSWER)

    async def call_ping(self, node_to_ask: Node) -> Result:
        return await self._call(node_to_ask, _is_id, self.ping)

    async def call_store(self, node_to_ask: Node, key: bytes, value: bytes) -> Result:
        return await self._call(node_to_ask, lambda r: isinstance(r, bool), self.store, key, value)

    async def call_find_node(self, node_to_ask: Node, node_to_find: Node) -> Result:
        return await self._call(node_to_ask, self._is_node_list, self.find_node, node_to_find.id)

    async def call_find_value(self, node_to_ask: Node, node_to_find: Node) -> Result:
        return await self._call(node_to_ask, self._is_value_or_nodes, self.find_value, node_to_find.id)

    async def _call(self, node: Node, valid: Callable[[Any], bool], rpc: Callable[..., Any], *args: Any) -> Result:
        started = time.monotonic()
        result: Result = await rpc((node.ip, node.port), self.source_node.id, *args)
        if result[0] and not valid(result[1]):
            self.metrics.dropped["bad_response"] += 1
            log.debug("malformed reply from %s; treating it as unreachable", node)
            result = _NO_ANSWER
        elif result[0]:
            self.rtt.observe(time.monotonic() - started)
        return self.handle_call_response(result, node)

    def handle_call_response(self, result: Result, node: Node) -> Result:
        """An answer welcomes the peer; silence evicts it and marks it dead (debug: routine in P2P)."""
        if result[0]:
            self.welcome_if_new(node)
        else:
            log.debug("no answer from %s; removing it from the routing table", node)
            self.dead.add(node.id)
            self.router.remove_contact(node)
        return result

    def _is_node_list(self, reply: Any) -> bool:
        return isinstance(reply, list) and len(reply) <= 2 * self.router.ksize and all(map(_is_contact, reply))

    def _is_value_or_nodes(self, reply: Any) -> bool:
        if isinstance(reply, dict):
            return set(reply) == {"value"} and isinstance(reply["value"], bytes)
        return self._is_node_list(reply)

    # -- lifecycle -----------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in a task that is kept until done and whose failure is logged."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("DHT background task failed", exc_info=task.exception())

    async def shutdown(self) -> None:
        """Answer every pending call with 'no reply' and stop background tasks."""
        for future, timer in list(self._outstanding.values()):
            timer.cancel()
            if not future.done():
                future.set_result(_NO_ANSWER)
        self._outstanding.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _hands_over(own: int, newcomer: int, key: int, contacts: list[int], ksize: int) -> bool:
    """kademlia's rule: we are closer to ``key`` than every contact, the newcomer than the k-th."""
    distances = [c ^ key for c in contacts if c != key]
    if not distances:
        return True
    if own ^ key >= min(distances):
        return False
    return newcomer ^ key < heapq.nsmallest(ksize, distances)[-1]


def _is_id(value: Any) -> bool:
    return isinstance(value, bytes) and len(value) == 20


def _is_kind(value: Any, kind: str) -> bool:
    return _is_id(value) if kind == _ID else isinstance(value, bytes)


def _is_contact(item: Any) -> bool:
    """``[node id, ip literal, port]``; hostnames are refused (they would block on DNS)."""
    if not (isinstance(item, list) and len(item) == 3 and _is_id(item[0])):
        return False
    ip, port = item[1], item[2]
    if not (isinstance(ip, str) and isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536):
        return False
    return _is_ip_literal(ip)


def _is_ip_literal(ip: str) -> bool:
    """IPv4 or IPv6 literal; ``inet_pton`` is ~10x cheaper than ``ipaddress`` (20 per reply)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, ip)
            return True
        except (OSError, ValueError):  # ValueError: embedded NUL, unencodable text
            pass
    return False
