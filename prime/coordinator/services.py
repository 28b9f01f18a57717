"""What a coordinator process owns and both of its roles use: config, key, store, peer, bus.

The daemon (``daemon.py``) opens these and hands the same bundle to the round driver
(``driver.py``) and the standby role (``standby.py``), so neither role reaches into the
other's state or the daemon's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from prime.bus.client import BusClient
from prime.bus.liveness import LivenessTracker
from prime.bus.topics import Topics
from prime.coordinator.auditing import CoordinatorAudit
from prime.coordinator.store import CoordinatorStore
from prime.core.config import JobConfig
from prime.core.identity import Identity
from prime.dht.peer import Peer
from prime.sealing import Sealer

Spawn = Callable[[Coroutine[Any, Any, Any]], asyncio.Task]


@dataclass(frozen=True)
class CoordinatorServices:
    config: JobConfig
    identity: Identity
    store: CoordinatorStore
    peer: Peer
    bus: BusClient
    topics: Topics
    liveness: LivenessTracker
    #: Runs background work that the daemon cancels and awaits on close.
    spawn: Spawn
    #: The node's audit log, through what the coordinator records in it (None: not audited, in unit tests).
    audit: CoordinatorAudit | None = None
    #: Seals what leaves the live database (snapshots for standbys, server state); no key: plaintext.
    sealer: Sealer = field(default_factory=Sealer)

    async def dht_put(self, name: str, value: dict, ttl_s: float, what: str) -> None:
        """One retried, never-fatal DHT put under the coordinator's key."""
        await self.peer.put_quietly(self.identity, name, value, ttl_s=ttl_s, what=what,
                                    max_retries=self.config.fault_tolerance.max_retries)

    def live_trainers(self) -> list[bytes]:
        """Admitted trainers whose heartbeats are fresh and who have not said goodbye."""
        alive = self.liveness.alive()
        return [k for k, hb in alive.items()
                if hb.online and k != self.identity.public_key and self.config.admission.admits(k)]
