"""The coordinator daemon: runs rounds from announcement to committed model version.

``Coordinator.create`` opens the durable store, the DHT/blob peer and the bus (with
an embedded broker when no URL is given); ``run`` drives rounds until the job's
last round; ``close`` releases everything. After a crash, ``create`` + ``run``
resume at the round after the last committed one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter
from pathlib import Path

from prime.atomic import write_atomic
from prime.bus.broker import EmbeddedBroker
from prime.bus.client import BusClient
from prime.bus.liveness import Heartbeat, LivenessTracker
from prime.bus.topics import Topics
from prime.coordinator.evaluation import evaluate
from prime.coordinator.intake import UpdateIntake
from prime.coordinator.rounds import RoundCollector
from prime.coordinator.selection import select_trainers
from prime.coordinator.standby import StandbyRole
from prime.coordinator.status import DB_NAME
from prime.coordinator.store import CoordinatorStore, RoundCommit
from prime.core import parcel, rewards, tensors
from prime.core.aggregation import build_strategy
from prime.core.config import JobConfig
from prime.core.datasets import load_digits_split
from prime.core.errors import CoordinatorError, DecodeError
from prime.core.identity import Identity
from prime.core.models import build_model
from prime.core.offload import run_sized, state_bytes
from prime.core.records import (
    COMMITTED_TTL,
    RoundAnnouncement,
    RoundCommitted,
    StandbyStatus,
    dht_announce_name,
    dht_checkpoint_name,
)
from prime.dht.peer import Peer
from prime.dht.swarm import DEFAULT_SEED_CLIENTS
from prime.telemetry import METRICS_FILE, MetricsFile

log = logging.getLogger(__name__)

EMBEDDED_BROKER = ("127.0.0.1", 1883)
#: Local file: the highest term this coordinator has led (not replicated: it says who *this* node was).
LED_TERM_FILE = "led_term"


class Coordinator:
    def __init__(
        self, config: JobConfig, identity: Identity, store: CoordinatorStore, peer: Peer,
        broker: EmbeddedBroker | None, mqtt_url: str, *, standby: bool = False,
    ) -> None:
        self.config = config
        self.identity = identity
        self.store = store
        self.peer = peer
        self.broker = broker
        self.topics = Topics(config.job_id)
        net = config.network
        self.heartbeat = Heartbeat(identity, self.topics, interval=net.heartbeat_interval, name="coordinator")
        self.bus = BusClient(
            # A standby shares the job key; MQTT evicts a duplicate client id, so each process adds its own.
            mqtt_url, f"coordinator-{identity.network_id}-{os.urandom(4).hex()}", will=self.heartbeat.will,
            max_retries=config.fault_tolerance.max_retries, timeout=net.timeout,
            max_payload=parcel.max_parcel_bytes(net.inline_blob_max_bytes),
        )
        self.liveness = LivenessTracker(timeout_s=3 * net.heartbeat_interval)
        self.model = build_model(config.model, seed=config.training.seed)
        self.test_data = load_digits_split(config.data.test_fraction, config.data.seed)[1]
        self._tasks: set[asyncio.Task] = set()
        self._stopping = asyncio.Event()
        self.intake = UpdateIntake(config, store, peer, self._spawn)
        self.dropped_coordination: Counter[str] = Counter()  # junk on announce/committed/standby topics
        self.metrics_file = MetricsFile(store.path.parent / METRICS_FILE, self._metrics)
        # Leadership: the term this node leads (0: none yet), the highest term seen on the bus.
        self.standby_flag = standby
        self.role = "starting"
        self.term = 0
        self.highest_term = 0
        self._led_term_file = store.path.parent / LED_TERM_FILE
        self.led_term = int(self._led_term_file.read_text()) if self._led_term_file.exists() else 0
        self._superseded = asyncio.Event()
        self._standby: StandbyRole | None = None
        self._standby_seen = 0.0
        self._standby_mirrored = 0
        self._standby_acked = asyncio.Event()
        self._takeover_term: int | None = None
        self.latest_committed: RoundCommitted | None = None
        # (digest, state, blob if small enough to ride inline) of the model committed last
        self._last_model: tuple[str, dict, bytes | None] | None = None

    @classmethod
    async def create(
        cls, config: JobConfig, *, data_dir: str | Path, listen: tuple[str, int] = ("127.0.0.1", 0),
        mqtt_url: str | None = None, bootstrap: list[tuple[str, int]] = (), standby: bool = False,
    ) -> "Coordinator":
        if not config.admission.open and not config.admission.trainers:
            raise CoordinatorError(
                "no trainer is admitted: list public keys (prime keygen prints them) under [admission.trainers], "
                "or set admission.open = true"
            )
        data_dir = Path(data_dir)
        identity = Identity.load_or_create(data_dir, "coordinator")
        if config.coordinator_public_key not in (None, identity.public_key):
            raise CoordinatorError(
                f"job config pins coordinator key {config.coordinator_key[:16]}…, but {data_dir}/node.key is "
                f"{identity.public_key_hex[:16]}…; run with the matching --data-dir or fix coordinator_key"
            )
        store = CoordinatorStore(data_dir / DB_NAME)
        store.bind_job(config.job_id, identity.public_key)
        broker = None
        url = mqtt_url or config.network.mqtt_url
        if url is None:
            broker = await EmbeddedBroker.start(*EMBEDDED_BROKER)
            url = broker.url
        peer = await Peer.create(
            data_dir, listen=listen, bootstrap=list(bootstrap), timeout=config.network.timeout,
            max_blob_bytes=config.network.max_message_size,
        )
        coordinator = cls(config, identity, store, peer, broker, url, standby=standby)
        await coordinator.bus.connect()
        await coordinator._ensure_genesis()
        coordinator.metrics_file.start()
        log.info("coordinator %s for job %s at %s, bus %s", identity.network_id, config.job_id, peer.address_str, url)
        return coordinator

    async def _ensure_genesis(self) -> None:
        """Store the initial model as version 0 (encoding and hashing off the event loop)."""
        if self.store.latest_version() is None:
            compress = self.config.network.enable_compression
            blob = await asyncio.to_thread(tensors.encode_state, self.model.state_dict(), compress=compress)
            digest = await asyncio.to_thread(self.peer.blobs.put_bytes, blob)
            self.store.record_genesis(digest, len(blob))

    # -- lifecycle ---------------------------------------------------------------------
    async def run(self) -> None:
        """Lead rounds (or stand by) until the job's last round is committed or ``stop()`` is called."""
        for topic in (self.topics.updates, self.topics.liveness_all, self.topics.announce,
                      self.topics.committed, self.topics.standby):
            await self.bus.subscribe(topic)
        listener = self._spawn(self._listen())
        stopped = self._spawn(self._stopping.wait())
        lead_next = not self.standby_flag and await self._may_lead()
        try:
            while True:
                role = self._spawn(self._lead(self._takeover_term) if lead_next else self._stand_by())
                await asyncio.wait({role, stopped, listener}, return_when=asyncio.FIRST_COMPLETED)
                if not role.done():
                    role.cancel()
                    break
                outcome = role.result()
                if outcome == "complete":
                    break
                lead_next = outcome == "take_over"
        finally:
            listener.cancel()
            stopped.cancel()
        if listener.done() and not listener.cancelled() and listener.exception():
            raise listener.exception()

    async def _may_lead(self) -> bool:
        """A (re)started coordinator leads unless the bus shows a newer term than it ever led."""
        await asyncio.sleep(max(1.0, 2 * self.config.network.heartbeat_interval))  # retained records arrive
        if self.liveness.is_alive(self.identity.public_key):  # we have not started ours: another process leads
            log.warning("another coordinator with this key is alive: standing by")
            return False
        if self.highest_term > self.led_term:
            log.warning("term %d is led by another coordinator (this one led term %d): standing by",
                        self.highest_term, self.led_term)
            return False
        return True

    async def _lead(self, term: int | None = None) -> str:
        self.term = term or max(self.led_term, 1)
        if self.term != self.led_term:
            write_atomic(self._led_term_file, str(self.term).encode())
            self.led_term = self.term
        self.highest_term = max(self.highest_term, self.term)
        self.role, self._superseded = "primary", asyncio.Event()
        self.heartbeat.start(self.bus)
        rounds = self._spawn(self._run_rounds())
        superseded = self._spawn(self._superseded.wait())
        try:
            await asyncio.wait({rounds, superseded}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            superseded.cancel()
        if not rounds.done():
            rounds.cancel()
            await self.heartbeat.stop(say_offline=False)
            await self.intake.close_round()
            log.warning("superseded by term %d: stepping down to standby", self.highest_term)
            return "superseded"
        rounds.result()
        return "complete"

    async def _stand_by(self) -> str:
        self.role = "standby"
        self._standby = StandbyRole(self, flagged=self.standby_flag)
        if self.latest_committed is not None:  # e.g. the retained notice that arrived before we stood by
            self._standby.on_committed(self.latest_committed)
        self._takeover_term = await self._standby.until_takeover()
        self._standby = None
        return "take_over"

    async def _run_rounds(self) -> None:
        total = self.config.federated.rounds
        round_number = self.store.last_committed_round() + 1
        if round_number > 1:
            log.info("resuming job %s at round %d", self.config.job_id, round_number)
        while total == 0 or round_number <= total:
            await self._run_round(round_number)
            round_number += 1
        log.info("job %s complete: %d rounds committed", self.config.job_id, total)
        await self._await_trainers_offline(timeout=5.0)

    async def _await_trainers_offline(self, timeout: float) -> None:
        """Let trainers see the final commit and sign off before the bus (maybe embedded) goes."""
        deadline = time.monotonic() + timeout
        while self._live_trainers() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)

    def stop(self) -> None:
        self._stopping.set()

    async def close(self) -> None:
        self.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.metrics_file.stop()
        await self.heartbeat.stop()
        await self.bus.close()
        await self.peer.close()
        if self.broker is not None:
            await self.broker.stop()
        self.store.close()

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- inputs ------------------------------------------------------------------------
    async def _listen(self) -> None:
        async for topic, payload in self.bus.messages():
            if topic == self.topics.updates:
                if self.role == "primary":
                    self._spawn(self.intake.receive_parcel(payload))
            elif topic.startswith(self.topics.prefix + "/liveness/"):
                self.liveness.observe(payload)
            elif topic in (self.topics.announce, self.topics.committed, self.topics.standby):
                self._on_coordination(topic, payload)

    def _on_coordination(self, topic: str, payload: bytes) -> None:
        """Records signed with the job's coordinator key: our own, a standby's, or another term's."""
        kind = {self.topics.announce: RoundAnnouncement, self.topics.committed: RoundCommitted,
                self.topics.standby: StandbyStatus}[topic]
        try:
            envelope, _ = parcel.unpack(payload, max_blob_bytes=self.config.network.inline_blob_max_bytes)
            record, _ = kind.open(envelope, signer=self.identity.public_key)
        except DecodeError as exc:
            self.dropped_coordination[topic.rsplit("/", 1)[-1]] += 1
            log.debug("dropped a bad %s record: %s", topic, exc)
            return
        if record.job_id != self.config.job_id:
            return
        if isinstance(record, StandbyStatus):
            if self.role == "primary":
                self._standby_seen = time.monotonic()
                self._standby_mirrored = max(self._standby_mirrored, record.mirrored_round)
                self._standby_acked.set()
            return
        self.highest_term = max(self.highest_term, record.term)
        if self.role == "primary" and record.term > self.term:
            self._superseded.set()
        elif self.role == "primary" and record.term == self.term and record.providers[:1] != [self.peer.address_str]:
            # Two leaders in one term must not happen; if it does, exactly one steps down.
            theirs = record.providers[0] if record.providers else ""
            log.error("another coordinator (%s) also leads term %d", theirs, self.term)
            if self.peer.address_str > theirs:
                self._superseded.set()
        if isinstance(record, RoundCommitted):
            if self.latest_committed is None or record.round > self.latest_committed.round:
                self.latest_committed = record
            if self._standby is not None:
                self._standby.on_committed(record)

    def _live_trainers(self) -> list[bytes]:
        alive = self.liveness.alive()
        return [k for k, hb in alive.items() if hb.online and k != self.identity.public_key and self.config.admission.admits(k)]

    def _metrics(self) -> dict:
        return {
            "role": f"coordinator-{self.role}",
            "term": self.term,
            "highest_term": self.highest_term,
            "round": self.intake.collector.round if self.intake.collector else None,
            "rounds_committed": self.store.last_committed_round(),
            "updates": self.intake.metrics(),
            **self.peer.metrics(),
            "bus": self.bus.metrics,
            "liveness": {"accepted": self.liveness.accepted, "dropped": dict(self.liveness.dropped)},
            "coordination": {"dropped": dict(self.dropped_coordination)},
        }

    # -- the round ---------------------------------------------------------------------
    async def _run_round(self, round_number: int) -> None:
        fed = self.config.federated
        version, digest, size = self.store.latest_version()
        global_state, inline = await self._model(digest, size)
        started, attempt = None, 0
        while True:
            attempt += 1
            recovered = self.store.pending(round_number)  # verified before a crash: reuse, don't refetch
            selected = await self._await_selection(round_number, attempt, reserved=list(recovered))
            started = started or time.monotonic()  # round time counts from the first announcement
            collector = await self._announce(round_number, version, digest, size, inline, selected, global_state)
            for envelope in recovered.values():
                self._spawn(self.intake.receive(envelope, via="recovered"))
            sweeper = self._spawn(self.intake.sweep_dht(collector))
            try:
                await self._collect(collector)
            finally:
                sweeper.cancel()
            await self.intake.close_round()
            if len(collector.accepted) >= fed.min_clients:
                break
            log.warning("round %d: %d of %d needed updates (deadline passed or selected trainers died); "
                        "re-announcing with a fresh selection", round_number, len(collector.accepted), fed.min_clients)
        await self._commit(collector, time.monotonic() - started, attempt)

    async def _collect(self, collector: RoundCollector) -> None:
        """Wait for updates until every selected trainer still alive has reported, or the deadline.

        A selected trainer whose Last Will arrived, or whose heartbeats stopped, is not waited
        for: the round closes as soon as nobody alive is still expected.
        """
        selected = collector.announcement.selected
        while (remaining := collector.announcement.deadline - time.time()) > 0:
            try:
                await asyncio.wait_for(collector.everyone_reported.wait(), min(remaining, 0.25))
                return
            except TimeoutError:
                pass
            alive = self.liveness.alive()
            expected = [k for k in selected if k not in collector.accepted
                        and (k in collector.in_flight or (k in alive and alive[k].online))]
            if not expected:
                dead = len(selected) - len(collector.accepted)
                log.warning("round %d: %d selected trainer(s) died; not waiting for them", collector.round, dead)
                return

    async def _model(self, digest: str, size: int) -> tuple[dict, bytes | None]:
        """The global model with this digest, and its blob if it rides inline: the one we just
        committed, else read back from the store."""
        if self._last_model is not None and self._last_model[0] == digest:
            return self._last_model[1], self._last_model[2]
        net = self.config.network
        data = await asyncio.to_thread(self.peer.blobs.map_private, digest)
        state = await run_sized(len(data), tensors.decode_state, data, max_bytes=net.max_message_size)
        return state, bytes(data) if net.rides_inline(size) else None

    async def _await_selection(self, round_number: int, attempt: int, reserved: list[bytes] = ()) -> list[bytes]:
        """Select among live admitted trainers once enough are up; ``reserved`` (trainers whose
        verified updates were recovered after a restart) are always in the selection."""
        fed = self.config.federated
        announced_wait = False
        while True:
            live = [k for k in self._live_trainers() if k not in reserved]
            if len(live) + len(reserved) >= fed.min_clients:
                chosen = select_trainers(
                    live, participation_rate=fed.participation_rate, min_clients=max(0, fed.min_clients - len(reserved)),
                    job_id=self.config.job_id, round_number=round_number, attempt=attempt,
                )
                return sorted({*chosen, *reserved})
            if not announced_wait:
                log.info("round %d: waiting for %d live admitted trainers", round_number, fed.min_clients)
                announced_wait = True
            await asyncio.sleep(0.1)

    async def _announce(self, round_number: int, version: int, digest: str, size: int, inline: bytes | None,
                        selected: list[bytes], global_state: dict) -> RoundCollector:
        now = time.time()
        announcement = RoundAnnouncement(
            job_id=self.config.job_id, term=self.term, round=round_number, model_version=version, model_digest=digest,
            model_size=size, providers=[self.peer.address_str], selected=selected,
            deadline=now + self.config.federated.round_timeout, issued=now,
            expires=now + self.config.federated.round_timeout, total_rounds=self.config.federated.rounds,
        )
        if self.config.network.peer_assists(size):  # a few copies leave here; trainers pass the model on
            self.peer.blob_server.limit_uploads(digest, DEFAULT_SEED_CLIENTS)
        collector = RoundCollector(announcement, build_strategy(self.config.federated.aggregation_strategy))
        self.intake.open_round(collector, global_state)
        sealed = announcement.seal(self.identity).to_bytes()
        await self.bus.publish(self.topics.announce, parcel.pack(sealed, inline), retain=True)
        # The bus carries it now; the DHT copy (for late joiners) must not hold up the round.
        self._spawn(self._dht_put(dht_announce_name(self.config.job_id), {"announcement": sealed},
                                  self.config.federated.round_timeout * 2, f"round-{round_number} announcement"))
        log.info("round %d announced: model v%d, %d trainers selected", round_number, version, len(selected))
        return collector

    async def _commit(self, collector: RoundCollector, seconds: float, attempts: int) -> None:
        nbytes = state_bytes(self.intake.global_state)
        new_state, scores = await run_sized(nbytes, collector.strategy.finish)
        parts = await run_sized(nbytes, tensors.encode_parts, new_state, compress=self.config.network.enable_compression)
        digest = await asyncio.to_thread(self.peer.blobs.put_parts, parts)
        size = tensors.parts_size(parts)
        inline = b"".join(parts) if self.config.network.rides_inline(size) else None
        self._last_model = (digest, new_state, inline)  # the next round starts from it: no read-back and decode
        accuracy, loss = await asyncio.to_thread(evaluate, self.model, new_state, self.test_data)
        # Rewards go to listed trainers only (open jobs let strangers help, not get paid).
        samples = {key: float(rec.num_samples) for key, rec in collector.accepted.items()
                   if self.config.admission.listed(key)}
        pool = rewards.split_pool(rewards.to_micro(self.config.federated.reward_pool), samples)
        commit = RoundCommit(collector.round, digest, size, collector.accepted_updates(scores), pool,
                             accuracy, loss, seconds, attempts)
        version = self.store.commit_round(commit, self.identity)  # on the loop: one SQLite connection, one thread
        log.info("round %d committed as v%d: %d updates, test accuracy %.4f, loss %.4f, %.2fs",
                 collector.round, version, len(commit.updates), accuracy, loss, seconds)
        checkpoint = await self._checkpoint(collector.round, digest)
        committed = RoundCommitted(
            job_id=self.config.job_id, term=self.term, round=collector.round, model_version=version,
            model_digest=digest, checkpoint_digest=checkpoint, providers=[self.peer.address_str],
            total_rounds=self.config.federated.rounds, participants=len(commit.updates), accuracy=accuracy,
            issued=time.time(), expires=time.time() + COMMITTED_TTL,
        )
        self._standby_acked.clear()
        await self.bus.publish(self.topics.committed, committed.seal(self.identity).to_bytes(), retain=True)
        await self._await_standby(collector.round)

    async def _checkpoint(self, round_number: int, model_digest: str) -> str:
        """Snapshot the committed state into a blob and point to it from the DHT, for standbys."""
        image = self.store.snapshot()
        digest = await asyncio.to_thread(self.peer.blobs.put_bytes, image)
        pointer = {"round": round_number, "term": self.term, "checkpoint_digest": digest,
                   "model_digest": model_digest, "providers": [self.peer.address_str]}
        self._spawn(self._dht_put(dht_checkpoint_name(self.config.job_id), pointer, 24 * 3600.0,
                                  f"round-{round_number} checkpoint pointer"))
        return digest

    async def _dht_put(self, name: str, value: dict, ttl_s: float, what: str) -> None:
        await self.peer.put_quietly(self.identity, name, value, ttl_s=ttl_s, what=what,
                                    max_retries=self.config.fault_tolerance.max_retries)

    async def _await_standby(self, round_number: int) -> None:
        """If a standby is alive, wait (briefly) until it holds this commit before moving on."""
        window = 3 * self.config.network.heartbeat_interval
        deadline = time.monotonic() + window
        while time.monotonic() - self._standby_seen < window and self._standby_mirrored < round_number:
            if (remaining := deadline - time.monotonic()) <= 0:
                log.warning("round %d: standby has not acked the checkpoint; continuing", round_number)
                return
            self._standby_acked.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._standby_acked.wait(), remaining)
