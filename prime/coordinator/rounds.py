"""The state of one open round (one announcement of it): who was selected, what was accepted.

The intake feeds verified, scored updates in; the collector refuses duplicates, keeps each
accepted update's measured score, remembers which selected trainers were refused (they are
no longer waited for), and signals when everyone still expected has reported. ``conduct``
is shared by every announcement of the same round: it is what reputation is updated from
at commit.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from prime.coordinator.reputation import RoundConduct
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
    #: Each accepted update's score at arrival (at its share) and its aggregation weight.
    scores: dict[bytes, float] = field(default_factory=dict)
    weights: dict[bytes, int] = field(default_factory=dict)
    #: Selected trainers refused in this announcement: not waited for, not re-selected.
    refused: set[bytes] = field(default_factory=set)
    #: Per key, what it did this round (across its announcements).
    conduct: dict[bytes, RoundConduct] = field(default_factory=dict)
    #: The most a selected trainer's claimed sample count weighs this round (absent: no cap).
    claim_caps: dict[bytes, int] = field(default_factory=dict)

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

    def accept(self, signer: bytes, record: UpdateRecord, score: float, weight: int = 1) -> None:
        """Book an update the strategy has already folded in."""
        self.in_flight.pop(signer, None)
        self.accepted[signer] = record
        self.scores[signer] = score
        self.weights[signer] = weight
        self.refused.discard(signer)  # a corrected retry made it
        self._check_done()

    def refuse(self, signer: bytes, reason: str) -> None:
        """A selected trainer's update was refused: stop waiting for it; note what it did."""
        if signer in self.announcement.selected and signer not in self.accepted:
            self.refused.add(signer)
        self.conduct.setdefault(signer, RoundConduct()).note_refusal(reason)
        self._check_done()

    def _check_done(self) -> None:
        if not self.expected():
            self.everyone_reported.set()

    def expected(self) -> list[bytes]:
        """Selected trainers that may still deliver (neither accepted nor refused)."""
        return [k for k in self.announcement.selected if k not in self.accepted and k not in self.refused]

    def missing(self) -> list[bytes]:
        return [k for k in self.expected() if k not in self.in_flight]

    def accepted_updates(self, shares: dict[bytes, float], scores: dict[bytes, float] | None = None
                         ) -> list[AcceptedUpdate]:
        """The accepted updates with their measured scores (default: the arrival ones) and strategy shares."""
        scores = self.scores if scores is None else scores
        return [
            AcceptedUpdate(key, rec.node_name, rec.blob_digest, rec.num_samples, scores.get(key, 0.0),
                           rec.metrics.get("train_seconds"), shares.get(key, 0.0))
            for key, rec in sorted(self.accepted.items())
        ]
