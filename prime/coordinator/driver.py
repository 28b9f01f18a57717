"""The round driver: select, announce, collect, commit, one round after another.

Per round: wait for enough live admitted trainers in good standing and select some;
assign each its shard of the task's data; announce the round (model version and digest,
selection, shards, the digest of the job's agreed terms, deadline) signed with the job
key; collect verified, scored updates through the intake until every selected trainer
that can still deliver reported or the deadline; then aggregate with the job's strategy
(one instance for the whole job: its server state lives across rounds), evaluate on the
task's held-out data and commit, in one SQLite transaction, the model version, round,
accepted updates with their measured scores, the strategy's server state, reputation
changes, and the reward, penalty and slash entries. Rewards follow measured
contributions: an update that did not help, or that the strategy dropped, earns nothing.
A round short of ``min_clients`` is re-announced with a fresh selection that leaves out
the trainers it refused. After a crash (or a takeover) the driver resumes at the round
after the last committed one, with the server state committed with it, reusing updates
that were verified before it. With a lossy ``compression.model`` codec the announcement names
the model's encoded blob (derived from the committed fp32 model, which stays the master).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from dataclasses import dataclass

import torch

from prime.coordinator.budget import BudgetKeeper
from prime.coordinator import registry
from prime.coordinator.evaluation import evaluate
from prime.coordinator.intake import UpdateIntake
from prime.coordinator.leadership import Leadership
from prime.coordinator.manifests import publish_manifest
from prime.coordinator.reputation import RoundConduct, Standing, next_standing
from prime.coordinator.rounds import RoundCollector
from prime.coordinator.scoring import ContributionScorer
from prime.coordinator.selection import select_trainers
from prime.coordinator.services import CoordinatorServices
from prime.coordinator.spotcheck import SpotChecker
from prime.coordinator.store import LedgerCharge, RoundCommit
from prime import codecs
from prime.core import parcel, rewards, tensors
from prime.core.agreement import canonical, job_terms, terms_digest
from prime.core.aggregation import build_strategy
from prime.core.aggregation.config import parse_aggregation
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


@dataclass(frozen=True)
class Broadcast:
    """The round's model as trainers get it: blob digest, size, inline copy (if small), and what it
    decodes to when that differs from the global state and a spot checker needs it (else None)."""

    digest: str
    size: int
    inline: bytes | None
    received: dict | None


class RoundDriver:
    def __init__(self, services: CoordinatorServices, leadership: Leadership, intake: UpdateIntake, task: Task,
                 *, data_path=None, device: str = "cpu", manifest=None) -> None:
        self.s = services
        self.config = services.config
        self.leadership = leadership
        self.intake = intake
        self.task = task
        self.data_path = data_path
        self.device = torch.device(device)  # where held-out forward passes run (scoring, evaluation)
        self.model = None  # the task's model (an evaluation copy, on self.device) and held-out data: prepare() loads them
        self.validation = None
        self.terms = job_terms(self.config, task.options_dict())
        self.terms_digest = terms_digest(self.terms)
        self.strategy = build_strategy(self._with_secret_noise_seed())
        self._shard_sizes: dict[int, int] = {}
        # (digest, state, blob if small enough to ride inline) of the model committed last
        self._last_model: tuple[str, dict, bytes | None] | None = None
        self.model_codec = codecs.from_config(self.config.compression.model)
        self._sent: tuple[str, Broadcast] | None = None  # the committed model's digest, and its broadcast
        self.budget = BudgetKeeper(services)
        #: The job manifest (``prime/core/manifest.py``), if the job has one; its digest rides in every announcement.
        self.manifest = manifest
        self.manifest_digest: str | None = None

    def _with_secret_noise_seed(self):
        """The job's strategy config; a DP noise seed, unless configured, derived from the job key.

        Deterministic signatures make it the same for the primary and its standby (they share
        the key) and unknowable to anyone else, so the noise cannot be subtracted; it is not in
        the mirrored server state."""
        config = parse_aggregation(self.config.federated.aggregation)
        if config.dp is None or config.dp.seed is not None:
            return config
        secret = self.s.identity.sign(b"prime-dp-noise-seed/" + self.config.job_id.encode())
        seed = int.from_bytes(hashlib.sha256(secret).digest()[:8], "big") & (2**63 - 1)
        return config.model_copy(update={"dp": config.dp.model_copy(update={"seed": seed})})

    async def prepare(self) -> None:
        """Load the task's model and held-out data; store the genesis model as version 0, and the
        job's terms where trainers can fetch them. A job whose budget is already spent stops here."""
        self.budget.check_start()
        seed = self.config.training.seed
        self.model, scoring_model, self.validation = await asyncio.to_thread(
            lambda: (self.task.build_model(seed), self.task.build_model(seed), self.task.load_validation(self.data_path)))
        genesis = self.task.exchanged_state(self.model)  # on the CPU (the committed master), kept when it moves
        self.model = await asyncio.to_thread(self.model.to, self.device)
        self.intake.scorer = ContributionScorer(self.task, scoring_model, self.validation, self.config.scoring,
                                                device=self.device)
        if self.config.verification.spot_check_rate > 0:
            secret = self.s.identity.sign(b"prime/spot-check-secret\0" + self.config.job_id.encode())
            checker = SpotChecker(self.config, self.task, secret=secret, data_path=self.data_path)
            reason = checker.unverifiable()
            if reason:
                log.warning("spot checks are configured but cannot run: %s", reason)
            else:
                self.intake.spot_checker = checker
        if self.task.spec.public_data and not self.config.federated.local_steps:
            self._shard_sizes = await asyncio.to_thread(self._count_shards)
        blobs = self.s.peer.blobs
        await asyncio.to_thread(blobs.put_bytes, canonical(self.terms))  # its digest is the terms digest
        self.s.store.bind_task(self.config.task.name, self.task.options_dict(), self.terms_digest)
        if self.manifest is not None:
            self.manifest_digest = await publish_manifest(self.s, self.manifest)
        if self.s.store.latest_version() is None:
            compress = self.config.network.enable_compression
            blob = await asyncio.to_thread(tensors.encode_state, genesis, compress=compress)
            digest = await asyncio.to_thread(blobs.put_bytes, blob)
            self.s.store.record_genesis(digest, len(blob), self.terms_digest)
        self._bind_registry()

    def _bind_registry(self) -> None:
        """The registry's tables, the job's gates and the genesis row (again after a standby's restore)."""
        registry.bind(self.s.store.db, self.config.gates, self._lineage(None, 0, [], {}))

    def _lineage(self, parent: int | None, round_number: int, updates, metrics: dict) -> registry.Lineage:
        contributors = [{"name": u.node_name, "key": u.node_key.hex(), "samples": u.num_samples,
                         "score": u.score if math.isfinite(u.score) else None, "share": u.share} for u in updates]
        return registry.Lineage(parent, round_number, self.config.task.name, self.task.options_dict(),
                                getattr(self.strategy, "label", self.strategy.name), self.terms_digest, contributors,
                                metrics)

    def _count_shards(self) -> dict[int, int]:
        from prime.tasks.spec import Shard

        count = self.config.num_shards
        return {i: len(self.task.load_shard(Shard(i, count, self.data_path))) for i in range(count)}

    async def _restore_server_state(self) -> None:
        """The strategy's state as committed with the last round (after a restart or a takeover)."""
        digest = self.s.store.latest_server_state()  # the store lives on the loop's thread
        if digest is None:
            return

        def load() -> None:
            data = self.s.sealer.open(self.s.peer.blobs.read_bytes(digest), f"server state blob {digest}")
            state = tensors.decode_state(bytearray(data), max_bytes=1 << 40)
            self.strategy.load_state_dict(state)

        await asyncio.to_thread(load)
        label = getattr(self.strategy, "label", self.strategy.name)
        log.info("restored the %s server state committed with round %d", label, self.s.store.last_committed_round())

    def _claim_caps(self, round_number: int, selected: list[bytes], shards: list[int]) -> dict[bytes, int]:
        """The most each selected trainer's claimed sample count may weigh: the samples its local work
        covers when the coordinator knows it (steps × batch; epochs × its shard for public data), else
        ``security.sample_claim_factor`` times the last round's median claim."""
        fed, training = self.config.federated, self.config.training
        if fed.local_steps:
            per_step = self.task.batch_size(training.batch_size) * training.gradient_accumulation
            return {key: fed.local_steps * per_step for key in selected}
        if self._shard_sizes:
            return {key: fed.local_epochs * self._shard_sizes[shard] for key, shard in zip(selected, shards)}
        median = self.s.store.median_claim(round_number - 1)
        if not median:
            return {}
        return {key: int(self.config.security.sample_claim_factor * median) for key in selected}

    async def run(self) -> None:
        """Lead rounds until the job's last one is committed (forever if ``rounds`` is 0)."""
        await self._restore_server_state()
        self.budget.resume()
        self._bind_registry()
        if self.s.audit is not None:
            self.s.audit.started("primary", self.terms_digest)
        total = self.config.federated.rounds
        round_number = self.s.store.last_committed_round() + 1
        if round_number > 1:
            log.info("resuming job %s at round %d", self.config.job_id, round_number)
        while (total == 0 or round_number <= total) and self.budget.stopped is None:
            await self._run_round(round_number)
            round_number += 1
        if self.budget.stopped is not None:
            log.info("job %s stopped by its budget after round %d (%s)", self.config.job_id,
                     self.budget.stopped["round"], self.budget.stopped["detail"])
        else:
            log.info("job %s complete: %d rounds committed", self.config.job_id, total)
        await self._await_trainers_offline(timeout=5.0)

    async def _await_trainers_offline(self, timeout: float) -> None:
        """Let trainers see the final commit and sign off before the bus (maybe embedded) goes."""
        deadline = time.monotonic() + timeout
        while self.s.live_trainers() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)

    async def _run_round(self, round_number: int) -> None:
        began = time.monotonic()  # the round's share of the job's wall time (budget.wall_seconds)
        version, digest, size = self.s.store.latest_version()
        global_state, inline = await self._model(digest, size)
        sent = await self._broadcast(digest, size, inline, global_state)
        standings = self.s.store.standings()
        excluded = {key for key, standing in standings.items() if standing.excluded(round_number)}
        conduct: dict[bytes, RoundConduct] = {}  # what each key did in this round, over its announcements
        started, attempt, scoring_s = None, 0, 0.0
        while True:
            attempt += 1
            recovered = self.s.store.pending(round_number)  # verified before a crash: reuse, don't refetch
            refused = {key for key, c in conduct.items() if c.refused} | excluded
            needed = self._needed(refused)
            selected = await self._await_selection(round_number, attempt, needed, reserved=list(recovered),
                                                   excluded=refused)
            started = started or time.monotonic()  # round time counts from the first announcement
            collector = await self._announce(round_number, version, sent.digest, sent.size, sent.inline, selected,
                                             global_state, conduct, received=sent.received)
            for envelope in recovered.values():
                self.s.spawn(self.intake.receive(envelope, via="recovered"))
            sweeper = self.s.spawn(self.intake.sweep_dht(collector))
            try:
                await self._collect(collector)
            finally:
                sweeper.cancel()
            await self.intake.close_round()
            if len(collector.accepted) >= self._needed({k for k, c in conduct.items() if c.refused} | excluded):
                break
            scoring_s += self.intake.scorer.seconds
            log.warning("round %d: %d of %d needed updates (deadline passed, trainers refused or died); "
                        "re-announcing with a fresh selection", round_number, len(collector.accepted), needed)
        await self._commit(collector, time.monotonic() - started, attempt, standings, scoring_s, began)

    async def _collect(self, collector: RoundCollector) -> None:
        """Wait for updates until every selected trainer still alive has reported, or the deadline.

        A selected trainer whose Last Will arrived, or whose heartbeats stopped, is not waited
        for: the round closes as soon as nobody alive is still expected.
        """
        while (remaining := collector.announcement.deadline - time.time()) > 0:
            try:
                await asyncio.wait_for(collector.everyone_reported.wait(), min(remaining, 0.25))
                return
            except TimeoutError:
                pass
            alive = self.s.liveness.alive()
            expected = [k for k in collector.expected() if k in collector.in_flight or (k in alive and alive[k].online)]
            if not expected:
                dead = len(collector.expected())
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

    def _needed(self, excluded: set[bytes]) -> int:
        """Updates a round needs: ``min_clients``, counting only trainers that can still help (a
        refused or excluded trainer must not stall the job), and never fewer than the strategy needs."""
        fed = self.config.federated
        if self.config.admission.open:
            return max(fed.min_clients, self.strategy.min_clients_required())
        admitted = {bytes.fromhex(key) for key in self.config.admission.trainers.values()}
        return max(self.strategy.min_clients_required(), min(fed.min_clients, len(admitted - excluded)))

    async def _await_selection(self, round_number: int, attempt: int, needed: int, reserved: list[bytes] = (),
                               excluded: set[bytes] = frozenset()) -> list[bytes]:
        """Select among live admitted trainers once ``needed`` are up; ``reserved`` (trainers whose
        verified updates were recovered after a restart) are always in the selection; ``excluded``
        (refused earlier in this round, or excluded for their reputation) never are."""
        fed = self.config.federated
        announced_wait = False
        while True:
            live = [k for k in self.s.live_trainers() if k not in reserved and k not in excluded]
            if len(live) + len(reserved) >= needed:
                cap = self.strategy.max_updates
                chosen = select_trainers(
                    live, participation_rate=fed.participation_rate, min_clients=max(0, needed - len(reserved)),
                    job_id=self.config.job_id, round_number=round_number, attempt=attempt,
                    max_count=None if cap is None else max(0, cap - len(reserved)),
                )
                return sorted({*chosen, *reserved})
            if not announced_wait:
                log.info("round %d: waiting for %d live admitted trainers (%d left out: refused this round or "
                         "excluded for their reputation)", round_number, needed, len(excluded))
                announced_wait = True
            await asyncio.sleep(0.1)

    async def _broadcast(self, digest: str, size: int, inline: bytes | None, global_state: dict) -> "Broadcast":
        """The model as the round sends it: in fp32 the committed blob itself; else its encoding in
        ``compression.model``, stored so that trainers (and peers) fetch it by digest, and (for spot
        checks, which start where trainers start) what it decodes to. The committed model stays the
        coordinator's fp32 master: trainers' deltas are applied to it, so rounding never accumulates."""
        if self.model_codec.plain:
            return Broadcast(digest, size, inline, None)
        if self._sent is not None and self._sent[0] == digest:
            return self._sent[1]
        net, nbytes = self.config.network, state_bytes(global_state)
        parts = await run_sized(nbytes, codecs.encode, self.model_codec, global_state, compress=net.enable_compression)
        sent_digest = await asyncio.to_thread(self.s.peer.blobs.put_parts, parts)
        sent_size = tensors.parts_size(parts)
        received = None
        if self.intake.spot_checker is not None:
            received = await run_sized(nbytes, codecs.roundtrip, self.model_codec, global_state)
        sent = Broadcast(sent_digest, sent_size, b"".join(parts) if net.rides_inline(sent_size) else None, received)
        self._sent = (digest, sent)
        log.info("model %s… goes out %s as %s… (%d bytes)", digest[:12], self.model_codec.describe(), sent_digest[:12],
                 sent_size)
        return sent

    async def _announce(self, round_number: int, version: int, digest: str, size: int, inline: bytes | None,
                        selected: list[bytes], global_state: dict, conduct: dict[bytes, RoundConduct],
                        *, received: dict | None = None) -> RoundCollector:
        now = time.time()
        fed, address = self.config.federated, self.s.peer.address_str
        shards = [self.config.shard_of(key) for key in selected]
        announcement = RoundAnnouncement(
            job_id=self.config.job_id, term=self.leadership.term, round=round_number, model_version=version,
            model_digest=digest, model_size=size, providers=[address], selected=selected,
            shards=shards, num_shards=self.config.num_shards,
            config_digest=self.terms_digest, model_codec=self.model_codec.name, deadline=now + fed.round_timeout,
            issued=now,
            expires=now + fed.round_timeout, total_rounds=fed.rounds, manifest_digest=self.manifest_digest,
        )
        if self.config.network.peer_assists(size):  # a few copies leave here; trainers pass the model on
            self.s.peer.blob_server.limit_uploads(digest, DEFAULT_SEED_CLIENTS)
        collector = RoundCollector(announcement, self.strategy, conduct=conduct,
                                   claim_caps=self._claim_caps(round_number, selected, shards))
        await self.intake.open_round(collector, global_state, received)
        sealed = announcement.seal(self.s.identity).to_bytes()
        await self.s.bus.publish(self.s.topics.announce, parcel.pack(sealed, inline), retain=True)
        # The bus carries it now; the DHT copy (for late joiners) must not hold up the round.
        self.s.spawn(self.s.dht_put(dht_announce_name(self.config.job_id), {"announcement": sealed},
                                    fed.round_timeout * 2, f"round-{round_number} announcement"))
        log.info("round %d announced: model v%d, %d trainers selected", round_number, version, len(selected))
        return collector

    async def _commit(self, collector: RoundCollector, seconds: float, attempts: int,
                      standings: dict[bytes, Standing], scoring_s: float, began: float) -> None:
        nbytes = state_bytes(self.intake.global_state)
        clock = time.perf_counter()
        result = await run_sized(nbytes, collector.strategy.finish)
        new_state = result.state
        aggregate_s, clock = time.perf_counter() - clock, time.perf_counter()
        parts = await run_sized(nbytes, tensors.encode_parts, new_state, compress=self.config.network.enable_compression)
        digest = await asyncio.to_thread(self.s.peer.blobs.put_parts, parts)
        store_s = time.perf_counter() - clock
        size = tensors.parts_size(parts)
        inline = b"".join(parts) if self.config.network.rides_inline(size) else None
        self._last_model = (digest, new_state, inline)  # the next round starts from it: no read-back and decode
        evaluated = time.perf_counter()
        metrics = await asyncio.to_thread(evaluate, self.task, self.model, new_state, self.validation)
        evaluate_s = time.perf_counter() - evaluated
        await self.intake.kept(collector)
        scores = await asyncio.to_thread(self.intake.scorer.marginal, self._accepted_deltas(collector))
        scoring_s += self.intake.scorer.seconds
        credits = self._credits(collector, result.scores, scores)
        pool = rewards.split_pool(rewards.to_micro(self.config.federated.reward_pool), credits)
        for key in credits:
            if credits[key] > 0:
                collector.conduct.setdefault(key, RoundConduct()).credited = True
        new_standings = {key: next_standing(standings.get(key, Standing()), c, collector.round, self.config.reputation)
                         for key, c in collector.conduct.items()}
        state_digest = await asyncio.to_thread(self._store_server_state)
        spent_before = self.budget.spent()
        spend, spend_detail, stop = self.budget.settle(collector, time.monotonic() - began)
        updates = collector.accepted_updates(result.scores, scores)
        lineage = self._lineage(collector.announcement.model_version, collector.round, updates, metrics)
        promotions: list[registry.Promotion] = []  # the gates' promotions, written in the commit transaction
        commit = RoundCommit(collector.round, digest, size, updates, pool,
                             metrics, seconds, attempts, self.terms_digest, charges=self._charges(collector.conduct),
                             standings=new_standings, server_state_digest=state_digest,
                             timings={"scoring_s": scoring_s, "evaluate_s": evaluate_s, "aggregate_s": aggregate_s,
                                      "store_model_s": store_s},
                             spend=spend, spend_detail=spend_detail, stop=stop,
                             also_write=(lambda cur, v: promotions.extend(
                                 registry.record_commit(cur, v, lineage, self.config.gates)),))
        try:
            version = self.s.store.commit_round(commit, self.s.identity)  # on the loop: one SQLite connection
        except BaseException:
            await self._restore_server_state()  # finish() advanced it; the commit did not happen
            raise
        shown = ", ".join(f"{k} {metrics[k]:.4f}" for k in self.task.metrics if k in metrics)
        log.info("round %d committed as v%d: %d updates (%d dropped by %s), %s, %.2fs (aggregate %.2fs, store "
                 "model %.2fs, evaluate %.2fs, scoring %.2fs)", collector.round, version, len(commit.updates),
                 len(result.dropped), self.config.federated.aggregation.name, shown, seconds, aggregate_s, store_s,
                 evaluate_s, scoring_s)
        for p in promotions:
            log.info("v%d: %s -> %s (%s): %s", p.version, p.from_stage, p.to_stage, p.by, p.reason)
        if self.s.audit is not None:
            self.s.audit.committed(collector.round, version, commit.charges, standings, new_standings, promotions)
        await self.budget.after_commit(collector.round, self.leadership.term, spent_before, stop)
        checkpoint = await self._checkpoint(collector.round, digest, state_digest)
        committed = RoundCommitted(
            job_id=self.config.job_id, term=self.leadership.term, round=collector.round, model_version=version,
            model_digest=digest, checkpoint_digest=checkpoint, providers=[self.s.peer.address_str],
            # a budget stop makes this round the last, so trainers see the job end as at its last round
            total_rounds=collector.round if stop else self.config.federated.rounds, participants=len(commit.updates),
            metrics=dict(list(metrics.items())[:16]), server_state_digest=state_digest,
            issued=time.time(), expires=time.time() + COMMITTED_TTL,
        )
        self.leadership.expect_ack()
        await self.s.bus.publish(self.s.topics.committed, committed.seal(self.s.identity).to_bytes(), retain=True)
        await self.leadership.await_standby(collector.round)

    def _accepted_deltas(self, collector: RoundCollector):
        """Each accepted update's (key, weight, delta), read back from the blob store one at a time
        (one not there scores 0)."""
        keys = {record.blob_digest: key for key, record in collector.accepted.items()}
        for digest, delta in self.intake.read_back(sorted(keys)):
            yield keys[digest], collector.weights.get(keys[digest], 1), delta

    def _credits(self, collector: RoundCollector, shares: dict[bytes, float],
                 scores: dict[bytes, float]) -> dict[bytes, float]:
        """What each update earns a share of the pool by: its marginal score if positive and the
        strategy kept it; nothing otherwise. Only listed trainers are paid (open jobs let
        strangers help, not get paid)."""
        credits = {}
        for key in collector.accepted:
            score = scores.get(key, 0.0)
            if self.config.admission.listed(key) and shares.get(key, 0.0) > 0 and math.isfinite(score):
                credits[key] = max(score, 0.0)
        return credits

    def _charges(self, conduct: dict[bytes, RoundConduct]) -> list[LedgerCharge]:
        """A penalty entry per penalized refusal reason, and a slash of the key's remaining stake."""
        stakes = {bytes.fromhex(self.config.admission.trainers[name]): rewards.to_micro(amount)
                  for name, amount in self.config.admission.stakes.items()}
        slashed = self.s.store.slashed()
        fraction = self.config.security.slash_fraction
        charges = []
        for key, c in sorted(conduct.items()):
            remaining = stakes.get(key, 0) - slashed.get(key, 0)
            for reason in sorted(c.refusals):
                charges.append(LedgerCharge(key, "penalty", 0, reason))
                amount = int(remaining * fraction)
                if amount > 0:
                    charges.append(LedgerCharge(key, "slash", -amount, reason))
                    remaining -= amount
        return charges

    def _store_server_state(self) -> str | None:
        """The strategy's state after this round as a blob (written and synced before the commit
        names it), or None for a stateless strategy."""
        state = self.strategy.state_dict()
        if set(state) <= {"strategy"}:
            return None
        return self.s.peer.blobs.put_bytes(self.s.sealer.seal(tensors.encode_state(state)))

    async def _checkpoint(self, round_number: int, model_digest: str, server_state_digest: str | None) -> str:
        """Snapshot the committed state into a blob and point to it from the DHT, for standbys."""
        image = self.s.store.snapshot()
        image = await asyncio.to_thread(self.s.sealer.seal, image)  # sealed with a state key: served to anyone
        digest = await asyncio.to_thread(self.s.peer.blobs.put_bytes, image)
        pointer = {"round": round_number, "term": self.leadership.term, "checkpoint_digest": digest,
                   "model_digest": model_digest, "providers": [self.s.peer.address_str],
                   "server_state_digest": server_state_digest or ""}
        self.s.spawn(self.s.dht_put(dht_checkpoint_name(self.config.job_id), pointer, 24 * 3600.0,
                                    f"round-{round_number} checkpoint pointer"))
        return digest
