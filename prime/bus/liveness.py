"""Liveness: signed heartbeats, a signed Last Will, and a tracker that believes neither blindly.

Anyone can publish on an anonymous broker, so every heartbeat is a signed envelope
(``Domain.HEARTBEAT``) and the Last Will is pre-signed at start-up: the broker
publishes our signed "offline" record if the connection dies. Each run of a node
has a random ``session`` id carried by its heartbeats and its Will, which lets the
tracker

* refuse replays: within a session ``seq`` must rise; a new session must carry a
  newer ``ts`` than the last one seen;
* take a Will only for the session it ends (an old session's Will, replayed or
  delivered late by the broker, cannot kill a node that has restarted).

Whether a node is alive is judged on the tracker's own monotonic clock (when its
last heartbeat arrived), so clock skew between machines does not matter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from prime.bus.client import LastWill
from prime.bus.topics import Topics
from prime.core.envelope import Domain, open_envelope, seal
from prime.core.errors import BusError, DecodeError, SignatureError
from prime.core.identity import Identity, network_id

log = logging.getLogger(__name__)

ONLINE = "online"
OFFLINE = "offline"
SESSION_BYTES = 16
#: Heartbeats are tiny; anything bigger is not one of ours.
MAX_HEARTBEAT_BYTES = 4096
_MAX_NAME = 128


class Publisher(Protocol):
    async def publish(self, topic: str, payload: bytes, retain: bool = False, qos: int = 1) -> None: ...


@dataclass(frozen=True)
class HeartbeatRecord:
    """A verified heartbeat or offline record, plus when this tracker received it."""

    pubkey: bytes
    node: str
    status: str
    ts: float
    seq: int
    session: bytes
    info: dict[str, Any]
    received_at: float = 0.0

    @property
    def online(self) -> bool:
        return self.status == ONLINE

    @property
    def network_id(self) -> str:
        return network_id(self.pubkey)


class Heartbeat:
    """Publishes a signed heartbeat every ``interval`` seconds; owns the signed Will.

    Build it before the bus client, pass ``heartbeat.will`` to ``BusClient``, then
    ``heartbeat.start(bus)`` and finally ``await heartbeat.stop()``.
    """

    def __init__(
        self,
        identity: Identity,
        topics: Topics,
        *,
        interval: float = 5.0,
        name: str | None = None,
        info: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"heartbeat interval must be > 0 seconds, got {interval}")
        self.identity = identity
        self.topic = topics.liveness(identity.network_id)
        self.interval = interval
        self.name = (name or identity.name or identity.network_id)[:_MAX_NAME]
        self.session = os.urandom(SESSION_BYTES)
        self._info = info
        self._seq = 0
        self._task: asyncio.Task[None] | None = None
        self._bus: Publisher | None = None
        # Signed once, now: the broker will publish exactly these bytes if we die.
        self._offline = seal(identity, Domain.HEARTBEAT, self._record(OFFLINE, 0, {})).to_bytes()

    def _record(self, status: str, seq: int, info: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "node": self.name,
            "status": status,
            "ts": time.time(),
            "seq": seq,
            "session": self.session,
            "info": dict(info),
        }

    @property
    def will(self) -> LastWill:
        """The Last Will to register with the broker: our pre-signed offline record."""
        return LastWill(self.topic, self._offline, False)

    @property
    def offline_payload(self) -> bytes:
        return self._offline

    def next_payload(self) -> bytes:
        """Sign the next online heartbeat."""
        self._seq += 1
        info = self._info() if callable(self._info) else (self._info or {})
        return seal(self.identity, Domain.HEARTBEAT, self._record(ONLINE, self._seq, info)).to_bytes()

    async def beat(self, bus: Publisher) -> None:
        """Publish one heartbeat now."""
        await bus.publish(self.topic, self.next_payload(), retain=False, qos=0)

    async def run(self, bus: Publisher) -> None:
        """Beat forever; a failed publish is logged and retried next interval, never fatal."""
        failing = False
        while True:
            try:
                await self.beat(bus)
                failing = False
            except BusError as exc:
                # One warning per outage, not one per interval.
                log.log(logging.DEBUG if failing else logging.WARNING, "heartbeat on %s not sent: %s", self.topic, exc)
                failing = True
            await asyncio.sleep(self.interval)

    def start(self, bus: Publisher) -> None:
        """Run the heartbeat loop as a background task on ``bus``."""
        if self._task is not None and not self._task.done():
            raise RuntimeError("heartbeat already running")
        self._bus = bus
        self._task = asyncio.create_task(self.run(bus), name=f"heartbeat:{self.name}")

    async def stop(self, *, say_offline: bool = True) -> None:
        """Stop beating and (by default) publish the signed offline record ourselves.

        A clean DISCONNECT makes the broker discard the Will, so a graceful exit
        must say "offline" explicitly or peers would wait for the timeout.
        """
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if say_offline and self._bus is not None:
            try:
                await self._bus.publish(self.topic, self._offline, retain=False, qos=1)
            except BusError as exc:
                log.warning("offline record on %s not sent: %s", self.topic, exc)


@dataclass
class _Entry:
    last: HeartbeatRecord
    best_ts: float  # newest ts accepted from this node, any session


@dataclass
class LivenessTracker:
    """Who is alive, from heartbeats and Wills. ``observe`` never raises.

    ``timeout_s`` is the default window for ``alive``/``is_alive`` (about three
    heartbeat intervals is a good value). At most ``max_nodes`` nodes are tracked;
    the longest-silent one is forgotten first, so signed junk from fresh keys cannot
    grow memory without bound.
    """

    timeout_s: float = 15.0
    max_nodes: int = 10_000
    max_bytes: int = MAX_HEARTBEAT_BYTES
    clock: Callable[[], float] = time.monotonic
    accepted: int = field(default=0, init=False)
    dropped: Counter[str] = field(default_factory=Counter, init=False)
    evicted: int = field(default=0, init=False)
    _nodes: dict[bytes, _Entry] = field(default_factory=dict, init=False, repr=False)

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def observe(self, payload: bytes) -> HeartbeatRecord | None:
        """Verify and apply one liveness message; return it, or ``None`` if dropped."""
        try:
            record = self._verify(payload)
        except SignatureError as exc:
            return self._drop("bad_signature", exc)
        except DecodeError as exc:
            return self._drop("malformed", exc)
        except Exception as exc:  # invariant 4: malformed input never stops a node
            return self._drop("malformed", exc)
        if not self._apply(record):
            return self._drop("stale", f"{record.node} seq {record.seq} ts {record.ts}")
        self.accepted += 1
        return record

    def _drop(self, reason: str, detail: object) -> None:
        self.dropped[reason] += 1
        log.debug("liveness message dropped (%s): %s", reason, detail)
        return None

    def _verify(self, payload: bytes) -> HeartbeatRecord:
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise DecodeError(f"payload is {type(payload).__name__}, not bytes")
        env = open_envelope(bytes(payload), Domain.HEARTBEAT, max_bytes=self.max_bytes)
        rec = env.record
        if not isinstance(rec, dict):
            raise DecodeError("heartbeat is not a map")
        node, status, ts = rec.get("node"), rec.get("status"), rec.get("ts")
        seq, session, info = rec.get("seq"), rec.get("session"), rec.get("info")
        if not isinstance(node, str) or len(node) > _MAX_NAME:
            raise DecodeError("heartbeat node name missing or too long")
        if status not in (ONLINE, OFFLINE):
            raise DecodeError(f"heartbeat status {status!r} unknown")
        if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
            raise DecodeError("heartbeat ts is not a finite number")
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise DecodeError("heartbeat seq is not a non-negative integer")
        if not isinstance(session, bytes) or len(session) != SESSION_BYTES:
            raise DecodeError("heartbeat session id missing or wrong length")
        if not isinstance(info, dict):
            raise DecodeError("heartbeat info is not a map")
        return HeartbeatRecord(env.signer, node, status, float(ts), seq, session, info, self.clock())

    def _apply(self, rec: HeartbeatRecord) -> bool:
        entry = self._nodes.get(rec.pubkey)
        if entry is None:
            self._insert(rec)
            return True
        last = entry.last
        same_session = rec.session == last.session
        if rec.status == OFFLINE:
            # A Will counts for the session it ends, or for a newer session we never heard.
            if not (same_session or rec.ts > entry.best_ts):
                return False
        elif same_session:
            if not last.online or rec.seq <= last.seq:
                return False  # that session already ended, or a replay / reordering
        elif rec.ts <= entry.best_ts:
            return False  # an older session replayed
        entry.last = rec
        entry.best_ts = max(entry.best_ts, rec.ts)
        return True

    def _insert(self, rec: HeartbeatRecord) -> None:
        if len(self._nodes) >= self.max_nodes:
            oldest = min(self._nodes, key=lambda k: self._nodes[k].last.received_at)
            del self._nodes[oldest]
            self.evicted += 1
        self._nodes[rec.pubkey] = _Entry(rec, rec.ts)

    def last(self, pubkey: bytes) -> HeartbeatRecord | None:
        """The latest accepted record of a node (online or offline), if any."""
        entry = self._nodes.get(pubkey)
        return entry.last if entry else None

    def alive(self, within_s: float | None = None) -> dict[bytes, HeartbeatRecord]:
        """Nodes whose last word was "online" and arrived within ``within_s`` seconds."""
        window = self.timeout_s if within_s is None else within_s
        now = self.clock()
        return {
            key: e.last
            for key, e in self._nodes.items()
            if e.last.online and now - e.last.received_at <= window
        }

    def is_alive(self, pubkey: bytes, within_s: float | None = None) -> bool:
        entry = self._nodes.get(pubkey)
        if entry is None or not entry.last.online:
            return False
        window = self.timeout_s if within_s is None else within_s
        return self.clock() - entry.last.received_at <= window
