"""The round driver: select, announce, collect, commit, one round after another.

Per round: wait for enough live admitted trainers and select some; assign each its shard
of the task's data; announce the round (model version and digest, selection, shards,
the digest of the job's agreed terms, deadline) signed with the job key; collect verified
updates through the intake until every live selected trainer reported or the deadline;
then aggregate, evaluate on the task's held-out data and commit model version, round,
accepted updates and rewards in one SQLite transaction. A round short of ``min_clients``
is re-announced with a fresh selection. After a crash the driver resumes at the round
after the last committed one, reusing updates that were verified before it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from prime.coordinator.evaluation import evaluate
from prime.coordinator.intake import UpdateIntake
from prime.coordinator.leadership import Leadership
from prime.coordinator.rounds import RoundCollector
from prime.coordinator.selection import select_trainers
from prime.coordinator.services import CoordinatorServices
from prime.coordinator.store import RoundCommit
from prime.core import parcel, rewards, tensors
from prime.core.agreement import canonical, job_terms, terms_digest
from prime.core.aggregation import build_strategy
from prime.core.offload import run_sized, state_bytes
from prime.core.records import (
    COMMITTED_TTL,
    RoundAnnouncement,
    RoundCommitted,
    dht_announce_name,
    dht_checkpoint_name,
)
from prime.dht.swarm import DEFAULT_SEED_CLIENTS
from prime.tasks.spec import Task

log = logging.getLogger(__name__)


class RoundDriver:
    def __init__(self, services: CoordinatorServices, leadership: Leadership, intake: UpdateIntake, task: Task,
                 *, data_path=None) -> None:
        self.s = services
        self.config = services.config
        self.leadership = leadership
        self.intake = intake
        self.task = task
        self.data_path = data_path
        self.model = None  # the task's model (an evaluation copy, on CPU) and held-out data: prepare() loads them
        self.validation = None
        self.terms = job_terms(self.config, task.options_dict())
        self.terms_digest = terms_digest(self.terms)
        # (digest, state, blob if small enough to ride inline) of the model committed last
        self._last_model: tuple[str, dict, bytes | None] | None = None

    async def prepare(self) -> None:
        """Load the task's model and held-out data; store the genesis model as version 0, and the
        job's terms where trainers can fetch them."""
        self.model, self.validation = await asyncio.to_thread(
            lambda: (self.task.build_model(self.config.training.seed), self.task.load_validation(self.data_path)))
        blobs = self.s.peer.blobs
        await asyncio.to_thread(blobs.put_bytes, canonical(self.terms))  # its digest is the terms digest
        self.s.store.bind_task(self.config.task.name, self.task.options_dict(), self.terms_digest)
        if self.s.store.latest_version() is None:
            compress = self.config.network.enable_compression
            blob = await asyncio.to_thread(tensors.encode_state, self.model.state_dict(), compress=compress)
            digest = await asyncio.to_thread(blobs.put_bytes, blob)
            self.s.store.record_genesis(digest, len(blob), self.terms_digest)

    async def run(self) -> None:
        """Lead rounds until the job's last one is committed (forever if ``rounds`` is 0)."""
        total = self.config.federated.rounds
        round_number = self.s.store.last_committed_round() + 1
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
        while self.s.live_trainers() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)

    async def _run_round(self, round_number: int) -> None:
        fed = self.config.federated
        version, digest, size = self.s.store.latest_version()
        global_state, inline = await self._model(digest, size)
        started, attempt = None, 0
        while True:
            attempt += 1
            recovered = self.s.store.pending(round_number)  # verified before a crash: reuse, don't refetch
            selected = await self._await_selection(round_number, attempt, reserved=list(recovered))
            started = started or time.monotonic()  # round time counts from the first announcement
            collector = await self._announce(round_number, version, digest, size, inline, selected, global_state)
            for envelope in recovered.values():
                self.s.spawn(self.intake.receive(envelope, via="recovered"))
            sweeper = self.s.spawn(self.intake.sweep_dht(collector))
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
            alive = self.s.liveness.alive()
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
        data = await asyncio.to_thread(self.s.peer.blobs.map_private, digest)
        state = await run_sized(len(data), tensors.decode_state, data, max_bytes=net.max_message_size)
        return state, bytes(data) if net.rides_inline(size) else None

    async def _await_selection(self, round_number: int, attempt: int, reserved: list[bytes] = ()) -> list[bytes]:
        """Select among live admitted trainers once enough are up; ``reserved`` (trainers whose
        verified updates were recovered after a restart) are always in the selection."""
        fed = self.config.federated
        announced_wait = False
        while True:
            live = [k for k in self.s.live_trainers() if k not in reserved]
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
        fed, address = self.config.federated, self.s.peer.address_str
        announcement = RoundAnnouncement(
            job_id=self.config.job_id, term=self.leadership.term, round=round_number, model_version=version,
            model_digest=digest, model_size=size, providers=[address], selected=selected,
            shards=[self.config.shard_of(key) for key in selected], num_shards=self.config.num_shards,
            config_digest=self.terms_digest, deadline=now + fed.round_timeout, issued=now,
            expires=now + fed.round_timeout, total_rounds=fed.rounds,
        )
        if self.config.network.peer_assists(size):  # a few copies leave here; trainers pass the model on
            self.s.peer.blob_server.limit_uploads(digest, DEFAULT_SEED_CLIENTS)
        collector = RoundCollector(announcement, build_strategy(fed.aggregation))
        self.intake.open_round(collector, global_state)
        sealed = announcement.seal(self.s.identity).to_bytes()
        await self.s.bus.publish(self.s.topics.announce, parcel.pack(sealed, inline), retain=True)
        # The bus carries it now; the DHT copy (for late joiners) must not hold up the round.
        self.s.spawn(self.s.dht_put(dht_announce_name(self.config.job_id), {"announcement": sealed},
                                    fed.round_timeout * 2, f"round-{round_number} announcement"))
        log.info("round %d announced: model v%d, %d trainers selected", round_number, version, len(selected))
        return collector

    async def _commit(self, collector: RoundCollector, seconds: float, attempts: int) -> None:
        nbytes = state_bytes(self.intake.global_state)
        new_state, scores = await run_sized(nbytes, collector.strategy.finish)
        parts = await run_sized(nbytes, tensors.encode_parts, new_state, compress=self.config.network.enable_compression)
        digest = await asyncio.to_thread(self.s.peer.blobs.put_parts, parts)
        size = tensors.parts_size(parts)
        inline = b"".join(parts) if self.config.network.rides_inline(size) else None
        self._last_model = (digest, new_state, inline)  # the next round starts from it: no read-back and decode
        metrics = await asyncio.to_thread(evaluate, self.task, self.model, new_state, self.validation)
        # Rewards go to listed trainers only (open jobs let strangers help, not get paid).
        samples = {key: float(rec.num_samples) for key, rec in collector.accepted.items()
                   if self.config.admission.listed(key)}
        pool = rewards.split_pool(rewards.to_micro(self.config.federated.reward_pool), samples)
        commit = RoundCommit(collector.round, digest, size, collector.accepted_updates(scores), pool,
                             metrics, seconds, attempts, self.terms_digest)
        version = self.s.store.commit_round(commit, self.s.identity)  # on the loop: one SQLite connection
        shown = ", ".join(f"{k} {metrics[k]:.4f}" for k in self.task.metrics if k in metrics)
        log.info("round %d committed as v%d: %d updates, %s, %.2fs",
                 collector.round, version, len(commit.updates), shown, seconds)
        checkpoint = await self._checkpoint(collector.round, digest)
        committed = RoundCommitted(
            job_id=self.config.job_id, term=self.leadership.term, round=collector.round, model_version=version,
            model_digest=digest, checkpoint_digest=checkpoint, providers=[self.s.peer.address_str],
            total_rounds=self.config.federated.rounds, participants=len(commit.updates),
            metrics=dict(list(metrics.items())[:16]), issued=time.time(), expires=time.time() + COMMITTED_TTL,
        )
        self.leadership.expect_ack()
        await self.s.bus.publish(self.s.topics.committed, committed.seal(self.s.identity).to_bytes(), retain=True)
        await self.leadership.await_standby(collector.round)

    async def _checkpoint(self, round_number: int, model_digest: str) -> str:
        """Snapshot the committed state into a blob and point to it from the DHT, for standbys."""
        image = self.s.store.snapshot()
        digest = await asyncio.to_thread(self.s.peer.blobs.put_bytes, image)
        pointer = {"round": round_number, "term": self.leadership.term, "checkpoint_digest": digest,
                   "model_digest": model_digest, "providers": [self.s.peer.address_str]}
        self.s.spawn(self.s.dht_put(dht_checkpoint_name(self.config.job_id), pointer, 24 * 3600.0,
                                    f"round-{round_number} checkpoint pointer"))
        return digest
