"""The state of one open round: who was selected, what has been accepted so far.

The daemon feeds verified updates in; the collector folds them into the strategy,
refuses duplicates, and signals when everyone selected has reported.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from prime.coordinator.store import AcceptedUpdate
from prime.core.aggregation import Strategy
from prime.core.errors import UpdateRejected
from prime.core.records import RoundAnnouncement, UpdateRecord


@dataclass
class RoundCollector:
    announcement: RoundAnnouncement
    strategy: Strategy
    accepted: dict[bytes, UpdateRecord] = field(default_factory=dict)
    in_flight: dict[bytes, str] = field(default_factory=dict)  # signer -> blob digest being verified
    everyone_reported: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def round(self) -> int:
        return self.announcement.round

    def claim(self, signer: bytes, record: UpdateRecord) -> bool:
        """Reserve ``signer``'s slot before the (slow) blob fetch.

        Returns False for an exact repeat of a record already seen (the DHT sweep and
        the bus notice deliver the same record twice); raises for a conflicting one.
        """
        if signer in self.accepted or signer in self.in_flight:
            known = self.accepted[signer].blob_digest if signer in self.accepted else self.in_flight[signer]
            if known == record.blob_digest:
                return False
            raise UpdateRejected("duplicate", f"a different update for round {self.round} was already received")
        self.in_flight[signer] = record.blob_digest
        return True

    def release(self, signer: bytes) -> None:
        """Give the slot back after a failed verification (a corrected retry may follow)."""
        self.in_flight.pop(signer, None)

    def accept(self, signer: bytes, record: UpdateRecord) -> None:
        """Book an update the strategy has already folded in."""
        self.in_flight.pop(signer, None)
        self.accepted[signer] = record
        if set(self.announcement.selected) <= set(self.accepted):
            self.everyone_reported.set()

    def missing(self) -> list[bytes]:
        return [k for k in self.announcement.selected if k not in self.accepted and k not in self.in_flight]

    def accepted_updates(self, scores: dict[bytes, float]) -> list[AcceptedUpdate]:
        return [
            AcceptedUpdate(key, rec.node_name, rec.blob_digest, rec.num_samples, scores.get(key, 0.0),
                           rec.metrics.get("train_seconds"))
            for key, rec in sorted(self.accepted.items())
        ]
