"""The coordinator process: opens what it owns, then leads rounds or stands by.

``Coordinator.create`` opens the durable store, the DHT/blob peer and the bus (with an
embedded broker when no URL is given); ``run`` routes bus messages and alternates
between the two roles as leadership (``leadership.py``) decides: the round driver
(``driver.py``) while this node leads, the standby role (``standby.py``) while another
does; ``close`` releases everything. After a crash, ``create`` + ``run`` resume at the
round after the last committed one.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from pathlib import Path

from prime.audit import AuditLog
from prime.bus.broker import EmbeddedBroker
from prime.bus.client import BusClient
from prime.bus.liveness import Heartbeat, LivenessTracker
from prime.bus.topics import Topics
from prime.coordinator.budget import refuse_if_spent
from prime.coordinator.budget_store import total_spend
from prime.coordinator.auditing import CoordinatorAudit
from prime.coordinator.driver import RoundDriver
from prime.coordinator.gates import check_gate_metrics
from prime.coordinator.intake import UpdateIntake
from prime.coordinator.leadership import Leadership
from prime.coordinator.sealed_state import bind_state_key
from prime.coordinator.services import CoordinatorServices
from prime.coordinator.standby import StandbyRole
from prime.coordinator.status import DB_NAME
from prime.coordinator.store import CoordinatorStore
from prime.core import parcel
from prime.core.config import JobConfig
from prime.core.errors import CoordinatorError, DecodeError
from prime.core.identity import Identity
from prime.core.records import RoundAnnouncement, RoundCommitted, StandbyStatus
from prime.dht.peer import Peer
from prime.manifests import load_manifest
from prime.sealing import Sealer, StateKey
from prime.tasks import task_of
from prime.coordinator.scoring import scoring_device
from prime.telemetry import METRICS_FILE, MetricsFile

log = logging.getLogger(__name__)

EMBEDDED_BROKER = ("127.0.0.1", 1883)


class Coordinator:
    def __init__(self, config: JobConfig, identity: Identity, store: CoordinatorStore, peer: Peer,
                 broker: EmbeddedBroker | None, mqtt_url: str, *, standby: bool = False, data_path=None,
                 device: str = "cpu", manifest=None, audit: AuditLog | None = None,
                 sealer: Sealer | None = None) -> None:
        self.config = config
        self.broker = broker
        topics = Topics(config.job_id)
        net = config.network
        self.heartbeat = Heartbeat(identity, topics, interval=net.heartbeat_interval, name="coordinator")
        bus = BusClient(
            # A standby shares the job key; MQTT evicts a duplicate client id, so each process adds its own.
            mqtt_url, f"coordinator-{identity.network_id}-{os.urandom(4).hex()}", will=self.heartbeat.will,
            max_retries=config.fault_tolerance.max_retries, timeout=net.timeout,
            max_payload=parcel.max_parcel_bytes(net.inline_blob_max_bytes),
        )
        self._tasks: set[asyncio.Task] = set()
        self.services = CoordinatorServices(config, identity, store, peer, bus, topics,
                                            LivenessTracker(timeout_s=3 * net.heartbeat_interval), self._spawn,
                                            audit=CoordinatorAudit(audit, config) if audit is not None else None,
                                            sealer=sealer or Sealer())
        self.audit_log = audit
        self.leadership = Leadership(store.path.parent, identity.public_key, peer.address_str, net.heartbeat_interval)
        self.intake = UpdateIntake(config, store, peer, self._spawn)
        self.intake.audit = self.services.audit
        self.driver = RoundDriver(self.services, self.leadership, self.intake, task_of(config), data_path=data_path,
                                  device=device, manifest=manifest)
        self.standby_flag = standby
        self._standby: StandbyRole | None = None
        self._takeover_term: int | None = None
        self.latest_committed: RoundCommitted | None = None
        self._stopping = asyncio.Event()
        self.dropped_coordination: Counter[str] = Counter()  # junk on announce/committed/standby topics
        self.metrics_file = MetricsFile(store.path.parent / METRICS_FILE, self._metrics)

    @classmethod
    async def create(
        cls, config: JobConfig, *, data_dir: str | Path, listen: tuple[str, int] = ("127.0.0.1", 0),
        mqtt_url: str | None = None, bootstrap: list[tuple[str, int]] = (), standby: bool = False,
        data_path: str | Path | None = None, device: str = "cpu", manifest: str | Path | None = None,
        state_key: StateKey | None = None,
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
        task = task_of(config)  # an unknown task or a bad option fails here, before anything is opened
        check_gate_metrics(config.gates, task.name, task.metrics, config.source)
        device = scoring_device(device)
        job_manifest = load_manifest(Path(manifest), config) if manifest is not None else None
        audit = AuditLog.open(data_dir, identity)
        store = CoordinatorStore(data_dir / DB_NAME)
        try:
            store.bind_job(config.job_id, identity.public_key)
            refuse_if_spent(config.budget, total_spend(store.db), source=config.source, database=str(store.path))
            bind_state_key(store, state_key)  # a wrong state key stops here, before anything is opened
        except BaseException:
            store.close()
            raise
        broker = None
        url = mqtt_url or config.network.mqtt_url
        if url is None:
            broker = await EmbeddedBroker.start(*EMBEDDED_BROKER)
            url = broker.url
        peer = await Peer.create(
            data_dir, listen=listen, bootstrap=list(bootstrap), timeout=config.network.timeout,
            max_blob_bytes=config.network.max_message_size,
        )
        try:
            coordinator = cls(config, identity, store, peer, broker, url, standby=standby,
                              data_path=Path(data_path) if data_path else None, device=device, manifest=job_manifest,
                              audit=audit, sealer=Sealer(state_key))
            await coordinator.services.bus.connect()
            await coordinator.driver.prepare()
        except BaseException:
            await peer.close()
            if broker is not None:
                await broker.stop()
            raise
        coordinator.metrics_file.start()
        log.info("coordinator %s for job %s (task %s) at %s, bus %s", identity.network_id, config.job_id,
                 config.task.name, peer.address_str, url)
        return coordinator

    # -- lifecycle ---------------------------------------------------------------------
    async def run(self) -> None:
        """Lead rounds (or stand by) until the job's last round is committed or ``stop()`` is called."""
        s = self.services
        for topic in (s.topics.updates, s.topics.liveness_all, s.topics.announce, s.topics.committed,
                      s.topics.standby):
            await s.bus.subscribe(topic)
        listener = self._spawn(self._listen())
        stopped = self._spawn(self._stopping.wait())
        lead_next = not self.standby_flag and await self.leadership.may_lead(s.liveness)
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

    async def _lead(self, term: int | None = None) -> str:
        self.leadership.begin_term(term)
        self.heartbeat.start(self.services.bus)
        rounds = self._spawn(self.driver.run())
        superseded = self._spawn(self.leadership.superseded.wait())
        try:
            await asyncio.wait({rounds, superseded}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            superseded.cancel()
        if not rounds.done():
            rounds.cancel()
            await self.heartbeat.stop(say_offline=False)
            await self.intake.close_round()
            log.warning("superseded by term %d: stepping down to standby", self.leadership.highest_term)
            return "superseded"
        rounds.result()
        return "complete"

    async def _stand_by(self) -> str:
        self.leadership.stand_by()
        self._standby = StandbyRole(self.services, self.leadership, flagged=self.standby_flag)
        if self.latest_committed is not None:  # e.g. the retained notice that arrived before we stood by
            self._standby.on_committed(self.latest_committed)
        self._takeover_term = await self._standby.until_takeover()
        self._standby = None
        return "take_over"

    def stop(self) -> None:
        self._stopping.set()

    async def close(self) -> None:
        self.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.metrics_file.stop()
        await self.heartbeat.stop()
        await self.services.bus.close()
        await self.services.peer.close()
        if self.broker is not None:
            await self.broker.stop()
        self.services.store.close()
        if self.audit_log is not None:
            self.audit_log.close()

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- inputs ------------------------------------------------------------------------
    async def _listen(self) -> None:
        topics = self.services.topics
        async for topic, payload in self.services.bus.messages():
            if topic == topics.updates:
                if self.leadership.role == "primary":
                    self._spawn(self.intake.receive_parcel(payload))
            elif topic.startswith(topics.prefix + "/liveness/"):
                self.services.liveness.observe(payload)
            elif topic in (topics.announce, topics.committed, topics.standby):
                self._on_coordination(topic, payload)

    def _on_coordination(self, topic: str, payload: bytes) -> None:
        """Records signed with the job's coordinator key: our own, a standby's, or another term's."""
        topics = self.services.topics
        kind = {topics.announce: RoundAnnouncement, topics.committed: RoundCommitted, topics.standby: StandbyStatus}[topic]
        try:
            envelope, _ = parcel.unpack(payload, max_blob_bytes=self.config.network.inline_blob_max_bytes)
            record, _ = kind.open(envelope, signer=self.services.identity.public_key)
        except DecodeError as exc:
            self.dropped_coordination[topic.rsplit("/", 1)[-1]] += 1
            log.debug("dropped a bad %s record: %s", topic, exc)
            return
        if record.job_id != self.config.job_id:
            return
        self.leadership.observe(record)
        if isinstance(record, RoundCommitted):
            if self.latest_committed is None or record.round > self.latest_committed.round:
                self.latest_committed = record
            if self._standby is not None:
                self._standby.on_committed(record)

    def _metrics(self) -> dict:
        s, lead = self.services, self.leadership
        return {
            "role": f"coordinator-{lead.role}",
            "term": lead.term,
            "highest_term": lead.highest_term,
            "round": self.intake.collector.round if self.intake.collector else None,
            "rounds_committed": s.store.last_committed_round(),
            "updates": self.intake.metrics(),
            **s.peer.metrics(),
            "bus": s.bus.metrics,
            "liveness": {"accepted": s.liveness.accepted, "dropped": dict(s.liveness.dropped)},
            "coordination": {"dropped": dict(self.dropped_coordination)},
            "budget": self.driver.budget.metrics(),
            "state": s.sealer.metrics(),
        }
