"""Validating Kademlia storage: holds only signed, owner-bound, unexpired, capped records.

``kademlia``'s own ``ForgetfulStorage`` keeps whatever any UDP sender STOREs. This
one validates every value (:func:`~prime.dht.records.validate_record`), keeps the
newest version per key, forgets records when they expire, and bounds memory.

Capacity policy: when full (after culling expired records) a *new* key is refused
(reason ``full``) rather than evicting a stored one. Evicting would let anyone with
freshly generated keys push honest records out; refusing only delays newcomers
until something expires, and every record expires within ``max_ttl_s``. Replacing
an existing key with a newer version is always allowed if it fits the byte cap.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from kademlia.storage import IStorage
from pydantic import BaseModel, ConfigDict, Field

from prime.dht.metrics import DHTMetrics
from prime.dht.records import DEFAULT_MAX_SKEW_S, DHTRecord, InvalidRecord, validate_record

log = logging.getLogger(__name__)


class StorageConfig(BaseModel):
    """Bounds on what one node keeps for the network."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_records: int = Field(10_000, gt=0)
    max_bytes: int = Field(16 * 1024 * 1024, gt=0)
    max_per_owner: int = Field(1_000, gt=0)
    max_ttl_s: float = Field(24 * 3600.0, gt=0)
    max_skew_s: float = Field(DEFAULT_MAX_SKEW_S, ge=0)


@dataclass
class _Entry:
    record: DHTRecord
    stored_at: float  # monotonic; kademlia republishes entries older than an hour


class ValidatingStorage(IStorage):
    """``IStorage`` that refuses (and counts) anything but valid records.

    ``clock`` is wall-clock time (records carry wall-clock expiry); tests inject one.
    """

    def __init__(
        self,
        config: StorageConfig | None = None,
        metrics: DHTMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config or StorageConfig()
        self.metrics = metrics or DHTMetrics()
        self._clock = clock
        self._entries: dict[bytes, _Entry] = {}
        self._expiry: list[tuple[float, bytes, bytes]] = []  # (expires, dkey, raw) min-heap
        self._per_owner: Counter[bytes] = Counter()
        self._bytes = 0
        self._last_full_warning = float("-inf")
        #: whether the most recent ``__setitem__``/``store`` kept the value
        self.last_accepted = False
        #: reason code of the most recent refusal (None after an accepted store)
        self.last_refusal: str | None = None

    # -- writes ---------------------------------------------------------------

    def store(self, dkey: bytes, value: object) -> bool:
        """Validate and keep ``value`` under ``dkey``; return whether it was kept."""
        self.last_refusal = None
        self.last_accepted = self._store(dkey, value)
        return self.last_accepted

    def __setitem__(self, key: bytes, value: object) -> None:
        self.store(key, value)

    def _store(self, dkey: bytes, value: object) -> bool:
        now = self._clock()
        self.cull(now)
        cfg = self.config
        try:
            record = validate_record(dkey, value, now, cfg.max_ttl_s, max_skew_s=cfg.max_skew_s)
        except InvalidRecord as exc:
            return self._refuse(exc.reason, dkey, exc.detail)
        old = self._entries.get(dkey)
        if old is not None:
            if old.record.raw == record.raw:  # a republish: same bytes, keep, refresh age
                old.stored_at = time.monotonic()
                self.metrics.accepted += 1
                return True
            if not record.newer_than(old.record):
                return self._refuse("stale", dkey, "a newer version is already stored")
            if self._bytes - len(old.record.raw) + len(record.raw) > cfg.max_bytes:
                return self._refuse("full", dkey, f"byte cap {cfg.max_bytes} reached")
            self._drop(dkey)
        else:
            if self._per_owner[record.owner] >= cfg.max_per_owner:
                return self._refuse("owner_full", dkey, f"owner already has {cfg.max_per_owner} records")
            if len(self._entries) >= cfg.max_records or self._bytes + len(record.raw) > cfg.max_bytes:
                return self._refuse("full", dkey, f"caps {cfg.max_records} records / {cfg.max_bytes} bytes")
        self._entries[dkey] = _Entry(record, time.monotonic())
        self._per_owner[record.owner] += 1
        self._bytes += len(record.raw)
        heapq.heappush(self._expiry, (record.expires, dkey, record.raw))
        self.metrics.accepted += 1
        return True

    def _refuse(self, reason: str, dkey: bytes, detail: str) -> bool:
        self.metrics.refused[reason] += 1
        self.last_refusal = reason
        if reason in ("full", "owner_full"):
            now = time.monotonic()
            if now - self._last_full_warning > 60.0:  # a flood must not flood the log too
                self._last_full_warning = now
                log.warning("DHT storage refusing records (%s): %s", reason, detail)
        else:
            log.debug("refused DHT record %s: %s %s", dkey.hex() if isinstance(dkey, bytes) else dkey, reason, detail)
        return False

    def _drop(self, dkey: bytes) -> None:
        entry = self._entries.pop(dkey)
        self._bytes -= len(entry.record.raw)
        self._per_owner[entry.record.owner] -= 1
        if self._per_owner[entry.record.owner] <= 0:
            del self._per_owner[entry.record.owner]

    def cull(self, now: float | None = None) -> int:
        """Forget every record whose ``expires`` has passed; return how many."""
        now = self._clock() if now is None else now
        culled = 0
        while self._expiry and self._expiry[0][0] <= now:
            _, dkey, raw = heapq.heappop(self._expiry)
            entry = self._entries.get(dkey)
            if entry is not None and entry.record.raw == raw:  # else a superseded version
                self._drop(dkey)
                culled += 1
        self.metrics.expired += culled
        # superseded versions linger in the heap until their own expiry; bound that
        if len(self._expiry) > 2 * len(self._entries) + 64:
            self._expiry = [(e.record.expires, k, e.record.raw) for k, e in self._entries.items()]
            heapq.heapify(self._expiry)
        return culled

    # -- reads ------------------------------------------------------------------

    def get_record(self, dkey: bytes) -> DHTRecord | None:
        """The verified record stored under ``dkey``, if any and unexpired."""
        self.cull()
        entry = self._entries.get(dkey)
        return entry.record if entry is not None else None

    def get(self, key: bytes, default: object = None) -> object:
        record = self.get_record(key)
        return record.raw if record is not None else default

    def __getitem__(self, key: bytes) -> bytes:
        record = self.get_record(key)
        if record is None:
            raise KeyError(key)
        return record.raw

    def __contains__(self, key: object) -> bool:
        return isinstance(key, bytes) and self.get_record(key) is not None

    def __bool__(self) -> bool:
        # kademlia does ``storage or ForgetfulStorage()``: an empty store must stay truthy
        return True

    def __len__(self) -> int:
        self.cull()
        return len(self._entries)

    @property
    def total_bytes(self) -> int:
        self.cull()
        return self._bytes

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        self.cull()
        return iter([(k, e.record.raw) for k, e in self._entries.items()])

    def iter_older_than(self, seconds_old: float) -> list[tuple[bytes, bytes]]:
        """(dkey, raw) of records stored more than ``seconds_old`` ago, for republishing."""
        self.cull()
        cutoff = time.monotonic() - seconds_old
        return [(k, e.record.raw) for k, e in self._entries.items() if e.stored_at <= cutoff]
