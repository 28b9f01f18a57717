"""Kademlia over UDP, hardened: every datagram is checked before anything acts on it.

``rpcudp`` decodes datagrams inside fire-and-forget tasks, so garbage raises
"Task exception was never retrieved", and it dispatches any ``rpc_*`` name with any
arguments. Here a datagram is decoded with prime's bounded decoder, checked against
a fixed table of RPCs with their argument types, and dispatched synchronously (all
Kademlia handlers are synchronous). Anything malformed is dropped and counted under
``metrics.dropped[reason]``. Replies from peers are checked the same way before the
crawlers see them, and a peer that answers nonsense is treated as unreachable.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import umsgpack
from kademlia.node import Node
from kademlia.protocol import KademliaProtocol

from prime.core import encoding
from prime.core.errors import DecodeError
from prime.dht.metrics import DHTMetrics
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
        self._wait_timeout = wait_timeout
        self.metrics = metrics or storage.metrics
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
            self.transport.sendto(RESPONSE + msg_id + umsgpack.packb(response), addr)
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
        if not self.router.is_new_node(node):
            return
        for dkey, value in self.storage:
            keynode = Node(dkey)
            neighbors = self.router.find_neighbors(keynode)
            if neighbors:
                new_node_close = node.distance_to(keynode) < neighbors[-1].distance_to(keynode)
                this_closest = self.source_node.distance_to(keynode) < neighbors[0].distance_to(keynode)
            if not neighbors or (new_node_close and this_closest):
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
        result = await self.ping((node_to_ask.ip, node_to_ask.port), self.source_node.id)
        return self._checked(result, node_to_ask, _is_id)

    async def call_store(self, node_to_ask: Node, key: bytes, value: bytes) -> Result:
        result = await self.store((node_to_ask.ip, node_to_ask.port), self.source_node.id, key, value)
        return self._checked(result, node_to_ask, lambda r: isinstance(r, bool))

    async def call_find_node(self, node_to_ask: Node, node_to_find: Node) -> Result:
        result = await self.find_node((node_to_ask.ip, node_to_ask.port), self.source_node.id, node_to_find.id)
        return self._checked(result, node_to_ask, self._is_node_list)

    async def call_find_value(self, node_to_ask: Node, node_to_find: Node) -> Result:
        result = await self.find_value((node_to_ask.ip, node_to_ask.port), self.source_node.id, node_to_find.id)
        return self._checked(result, node_to_ask, self._is_value_or_nodes)

    def _checked(self, result: Result, node: Node, valid: Callable[[Any], bool]) -> Result:
        if result[0] and not valid(result[1]):
            self.metrics.dropped["bad_response"] += 1
            log.debug("malformed reply from %s; treating it as unreachable", node)
            result = _NO_ANSWER
        return self.handle_call_response(result, node)

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
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        return False
    return True
