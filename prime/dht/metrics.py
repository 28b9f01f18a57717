"""Counters a DHT node keeps about what it refused and dropped, and why.

Malformed or forged input is never fatal (DESIGN invariant 4): it is counted here
under a short reason code, so an operator (and a test) can see what was thrown away.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class DHTMetrics:
    """Shared by a node's storage and protocol; cheap to update, copied by :meth:`snapshot`."""

    accepted: int = 0
    expired: int = 0
    #: records refused by local storage (validation, stale, caps), by reason
    refused: Counter[str] = field(default_factory=Counter)
    #: inbound datagrams dropped before or during dispatch, by reason
    dropped: Counter[str] = field(default_factory=Counter)
    #: invalid records peers returned to our lookups, by reason
    bad_values: Counter[str] = field(default_factory=Counter)

    def snapshot(self, **extra: Any) -> dict[str, Any]:
        """A plain-dict copy (safe to log, compare or serialise)."""
        return {
            **extra,
            "accepted": self.accepted,
            "expired": self.expired,
            "refused": dict(self.refused),
            "dropped": dict(self.dropped),
            "bad_values": dict(self.bad_values),
        }
