"""The standby role: mirror the primary's checkpoints, take over when it dies.

A standby holds the job's coordinator key (the operator copies ``node.key``) but
neither heartbeats nor runs rounds. After every commit the primary publishes a
signed ``RoundCommitted`` naming a checkpoint blob (a SQLite snapshot) and puts a
pointer to it in the DHT; the standby fetches that blob and the new model through
the blob service, restores its database from it, and acks on the bus. When the
primary's Last Will arrives or its heartbeats stop, the standby takes over with
the next term, but only once it holds the latest committed state: it never takes
over behind, so no committed round is lost or redone.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from prime.coordinator.leadership import Leadership
from prime.coordinator.services import CoordinatorServices
from prime.core.errors import PrimeError
from prime.core.net import parse_hostport
from prime.core.records import RoundCommitted, StandbyStatus, dht_checkpoint_name
from prime.core.retry import with_retries
from prime.blobs.fetch import fetch_from_any

log = logging.getLogger(__name__)


class StandbyRole:
    def __init__(self, services: CoordinatorServices, leadership: Leadership, *, flagged: bool) -> None:
        self.s = services
        self.leadership = leadership
        interval = services.config.network.heartbeat_interval
        # The broker is the arbiter: it publishes the primary's (pre-signed) Last Will only once the
        # primary's connection is really gone, so a Will allows a quick takeover. A coordinator started
        # with --standby waits a little longer than one that stepped down, so two standbys facing a dead
        # primary do not both take over. Mere silence (a primary never seen, a broker that lost the Will)
        # needs much longer: a slow primary must not be deposed while it still commits.
        self.after_will = interval * (3 if flagged else 1) + random.uniform(0, interval)
        self.after_silence = max(15.0, 20 * interval)
        self.latest: RoundCommitted | None = None
        self._mirror_lock = asyncio.Lock()

    @property
    def mirrored_round(self) -> int:
        return self.s.store.last_committed_round()

    def holds(self, round_number: int, model_digest: str) -> bool:
        """Whether our state already contains exactly this commit (or a later one).

        Same round but another model means our copy of that round was never published (we
        committed it locally as primary and died before announcing it): the published one wins."""
        if round_number < self.mirrored_round:
            return True
        latest = self.s.store.latest_version()
        return round_number == self.mirrored_round and latest is not None and latest[1] == model_digest

    def on_committed(self, committed: RoundCommitted) -> None:
        """A verified commit notice: remember it and mirror its checkpoint."""
        if self.latest is None or committed.round >= self.latest.round:
            self.latest = committed
        if not self.holds(committed.round, committed.model_digest):
            self.s.spawn(self._mirror(committed.round, committed.checkpoint_digest, committed.model_digest,
                                      committed.providers, committed.server_state_digest))

    async def _mirror(self, round_number: int, checkpoint: str, model: str, providers: list[str],
                      server_state: str | None = None) -> bool:
        """Fetch a commit's snapshot, model and strategy server state, then restore the snapshot."""
        async with self._mirror_lock:
            if self.holds(round_number, model):
                return True
            net, ft = self.s.config.network, self.s.config.fault_tolerance
            addresses = [parse_hostport(p) for p in providers]
            try:
                for digest in (checkpoint, model, *([server_state] if server_state else [])):
                    await with_retries(
                        lambda d=digest: fetch_from_any(addresses, d, self.s.peer.blobs,
                                                        max_bytes=net.max_message_size, timeout=net.timeout),
                        what=f"mirroring round {round_number}", max_retries=ft.max_retries,
                    )
                image = await asyncio.to_thread(self.s.peer.blobs.read_bytes, checkpoint)
                image = await asyncio.to_thread(self.s.sealer.open, image, f"checkpoint blob {checkpoint} "
                                                f"(round {round_number})")  # the primary's key: the same
                self.s.store.restore(image, self.s.config.job_id, self.s.identity.public_key)
            except PrimeError as exc:
                log.warning("standby: could not mirror round %d yet: %s", round_number, exc)
                return False
            log.info("standby: mirrored the primary's state through round %d", round_number)
        await self._ack()
        return True

    async def _ack(self) -> None:
        now = time.time()
        status = StandbyStatus(job_id=self.s.config.job_id, term=max(self.leadership.highest_term, 1),
                               mirrored_round=self.mirrored_round, issued=now, expires=now + 60)
        try:
            await self.s.bus.publish(self.s.topics.standby, status.seal(self.s.identity).to_bytes())
        except PrimeError as exc:
            log.warning("standby: ack not sent: %s", exc)

    async def _catch_up_from_dht(self) -> None:
        """The DHT pointer names the newest checkpoint even if we missed its bus notice."""
        try:
            pointer = await self.s.peer.dht.get(self.s.identity.public_key, dht_checkpoint_name(self.s.config.job_id))
        except PrimeError:
            return
        if (isinstance(pointer, dict) and isinstance(pointer.get("round"), int)
                and not self.holds(pointer["round"], str(pointer.get("model_digest")))):
            try:
                await self._mirror(pointer["round"], pointer["checkpoint_digest"], pointer["model_digest"],
                                   list(pointer["providers"]), pointer.get("server_state_digest") or None)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("standby: malformed checkpoint pointer in the DHT: %s", exc)

    async def until_takeover(self) -> int:
        """Mirror and ack until the primary is gone; return the term to lead with."""
        interval = self.s.config.network.heartbeat_interval
        key = self.s.identity.public_key
        last_alive = time.monotonic()
        last_ack = 0.0
        log.info("standby for job %s: mirroring through round %d", self.s.config.job_id, self.mirrored_round)
        while True:
            await asyncio.sleep(0.2)
            now = time.monotonic()
            if now - last_ack > interval:
                last_ack = now
                await self._ack()
            if self.s.liveness.is_alive(key, within_s=3 * interval):
                last_alive = now
                continue
            heartbeat = self.s.liveness.last(key)
            will_received = heartbeat is not None and not heartbeat.online
            if now - last_alive < (self.after_will if will_received else self.after_silence):
                continue
            await self._catch_up_from_dht()
            behind = self.latest is not None and not self.holds(self.latest.round, self.latest.model_digest)
            if behind and not await self._mirror(self.latest.round, self.latest.checkpoint_digest,
                                                 self.latest.model_digest, self.latest.providers,
                                                 self.latest.server_state_digest):
                log.warning("standby: primary is gone but round %d's checkpoint is unreachable; "
                            "not taking over behind it", self.latest.round)
                continue
            term = self.leadership.highest_term + 1
            log.warning("standby: primary %s %.1fs ago; taking over at round %d with term %d",
                        "died (Last Will)" if will_received else "went silent", now - last_alive,
                        self.mirrored_round + 1, term)
            return term
