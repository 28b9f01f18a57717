"""``TrainerNode``: an async trainer you can run from the CLI or embed in an asyncio app.

Lifecycle: ``node = await TrainerNode.create(...)``, ``await node.start_training()``
(returns when the job ends or ``stop()`` is called), ``await node.close()``; or
``async with`` it. Per round it: verifies the coordinator's signed announcement, checks
that the job's agreed terms (task, options, data split, training recipe) are its own,
takes the shard of the task's data the announcement assigns it, takes the global model from the announcement (small models ride inline) or fetches it
by digest (peer-assisted when it is large: ``modelfetch``), trains locally (FSDP2, in a
worker thread so the event loop keeps serving; the model decoded with the job's model codec),
stores its update blob (in the job's update codec: ``prime/codecs``; top-k's error-feedback
residual stays here, in the checkpoints), signs an update record, puts it in the DHT under its own key, and sends the record as a notice on the bus
(with the update inline when it is small). With ``federated.overlap`` it trains its next block
of inner steps while it waits for the next announcement (``overlap.py``); ``metrics.json``
records the fraction of its wall time spent in inner steps (``utilization.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from torch import nn

import prime
from prime import codecs
from prime.audit import AuditLog
from prime.bus.client import BusClient
from prime.bus.liveness import Heartbeat
from prime.bus.topics import Topics
from prime.core import parcel, tensors
from prime.core.aggregation.config import proximal_mu
from prime.core.agreement import differences, job_terms, terms_digest
from prime.core.config import JobConfig
from prime.core.datasets import Split
from prime.core.errors import BlobError, DecodeError, PrimeError, TrainerError
from prime.core.identity import Identity
from prime.core.records import (
    COMMITTED_TTL,
    RoundAnnouncement,
    RoundCommitted,
    UpdateRecord,
    dht_update_name,
    freshness_error,
)
from prime.core.offload import run_sized, state_bytes
from prime.core.net import parse_hostport
from prime.blobs.fetch import fetch_verified
from prime.dht.peer import Peer
from prime.tasks import task_of
from prime.telemetry import METRICS_FILE, MetricsFile
from prime.trainer.budget import cap_memory, device_kind, peak_memory_bytes, reset_peak
from prime.sealing import Sealer, StateKey
from prime.trainer.checkpoint import AUTO_PREFIX, CheckpointStore
from prime.trainer.datacheck import ManifestCheck
from prime.trainer.distributed import resolve_device
from prime.trainer.engine import LocalEngine, LocalWork, RoundKey, TrainMetrics
from prime.trainer.modelfetch import ModelFetcher
from prime.trainer.overlap import AheadBlock, rebased
from prime.trainer.utilization import Utilization

log = logging.getLogger(__name__)

#: Drops of signed announcements that go to the node's audit log (the first MAX_AUDITED_DROPS of each).
AUDITED_DROPS = frozenset({"config_mismatch", "shard_mismatch", "bad_inline_model"})
MAX_AUDITED_DROPS = 100

DEFAULT_MQTT_URL = "mqtt://127.0.0.1:1883"


class TrainerNode:
    def __init__(
        self,
        node_id: str,
        config: JobConfig,
        identity: Identity,
        engine: LocalEngine,
        peer: Peer,
        checkpoints: CheckpointStore,
        start_round: int,
        mqtt_url: str,
        *,
        pinned_shard: int | None = None,
        own_data: bool = False,
    ) -> None:
        self.node_id = node_id
        self.config = config
        self.identity = identity
        self.engine = engine
        self.peer = peer
        self.checkpoints = checkpoints
        self.topics = Topics(config.job_id)
        net, ft = config.network, config.fault_tolerance
        self.heartbeat = Heartbeat(
            identity, self.topics, interval=net.heartbeat_interval, name=node_id, info=self._heartbeat_info
        )
        self.bus = BusClient(
            mqtt_url, f"trainer-{identity.network_id}", will=self.heartbeat.will,
            max_retries=ft.max_retries, timeout=net.timeout,
            max_payload=parcel.max_parcel_bytes(net.inline_blob_max_bytes),
        )
        self.coordinator_key = config.coordinator_public_key
        self.terms = job_terms(config, engine.task.options_dict())
        self.terms_digest = terms_digest(self.terms)
        self._explained: set[str] = set()  # coordinator term digests whose differences were logged
        self.pinned_shard = pinned_shard  # --data-partition: this node trains on that shard only
        self.own_data = own_data  # an embedded trainer's own data: no shard of the task's
        self.last_submitted_round = start_round - 1
        self.current_round = 0
        self.is_training = False
        self.metrics = TrainMetrics(0.0, 0.0, 0.0, 0, 0, 0.0)
        self.rounds_trained = 0
        #: fault_tolerance.checkpoint_interval counts seconds from here (or from the last checkpoint).
        self._checkpointed_at = time.monotonic()
        self.dropped: dict[str, int] = {}
        self.audit: AuditLog | None = None  # the node's audit log (``create`` opens it)
        self._last_update: UpdateRecord | None = None  # the last update submitted, to re-sign for a new term
        self.update_codec = codecs.from_config(config.compression.update)
        self.model_codec = codecs.from_config(config.compression.model)
        #: An update codec with error feedback (topk) keeps what was not sent; it is in every checkpoint.
        self.feedback = codecs.ErrorFeedback(self.update_codec) if self.update_codec.error_feedback else None
        self.highest_term = 0  # trainers follow the highest valid coordinator term they have seen
        self._pending: tuple[RoundAnnouncement, bytes | None] | None = None  # (announcement, inline model)
        self._ahead: AheadBlock | None = None  # federated.overlap: the block training for the next round
        self.overlap_counts = {"blocks_sent": 0, "blocks_dropped": 0}
        self.utilization = Utilization()
        self._background: set[asyncio.Task] = set()
        self.model_fetcher = ModelFetcher(peer, identity, config, self._spawn)
        self.device_kind = device_kind(engine.device)
        #: Announcements that name a job manifest: this node's shard files and task source against it.
        self.data_check = ManifestCheck(peer, engine.task, engine.data_path, timeout=config.network.timeout,
                                        prime_version=prime.__version__, compute_kind=self.device_kind)
        self.metrics_file = MetricsFile(checkpoints.root.parent / METRICS_FILE, self._metrics)
        self._wake = asyncio.Event()
        self._finished = asyncio.Event()

    # -- construction ------------------------------------------------------------------
    @classmethod
    async def create(
        cls,
        node_id: str,
        config: JobConfig,
        *,
        data_dir: str | Path,
        coordinators: list[tuple[str, int]],
        mqtt_url: str | None = None,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        start_round: int = 1,
        data_partition: int | None = None,
        data_path: str | Path | None = None,
        device: str | None = None,
        model: nn.Module | None = None,
        data: Split | None = None,
        state_key: StateKey | None = None,
    ) -> "TrainerNode":
        """Open identity, local state, DHT and blob peer, and the bus; resume from checkpoints.

        The model and data come from the job's task unless ``model`` / ``data`` are given (an
        embedded trainer's own module, whose state must match the task's, and its own data).
        Without ``data`` the node trains on the shard each announcement assigns it, or on
        ``data_partition`` alone (a round assigning another shard is refused). With ``state_key``
        its checkpoints are sealed (``prime/sealing.py``); a key that does not open them stops here."""
        if config.coordinator_public_key is None:
            raise TrainerError("job config has no coordinator_key: trainers only follow a pinned coordinator")
        if data_partition is not None and not 0 <= data_partition < config.num_shards:
            raise TrainerError(f"--data-partition {data_partition} outside shards 0..{config.num_shards - 1}")
        data_dir = Path(data_dir)
        identity = Identity.load_or_create(data_dir, node_id)
        checkpoints = CheckpointStore(data_dir / "checkpoints", keep=config.fault_tolerance.max_checkpoints,
                                      sealer=Sealer(state_key))
        checkpoints.check_key()  # a wrong state key stops the node before it loads or opens anything
        task = task_of(config)
        engine = await asyncio.to_thread(LocalEngine, task, config.training, model, device=resolve_device(device),
                                         data_path=Path(data_path) if data_path else None,
                                         proximal_mu=proximal_mu(config.federated.aggregation))
        cap_memory(engine.device, config.budget.memory_bytes_per_trainer)
        if data is not None:
            engine.use_data(data)
        elif data_partition is not None:  # a pinned shard must load now
            await asyncio.to_thread(engine.use_shard, data_partition, config.num_shards)
        else:  # the shard the coordinator will most likely assign, loaded now rather than in round 1
            shard = config.shard_of(identity.public_key)
            try:
                await asyncio.to_thread(engine.use_shard, shard, config.num_shards)
            except PrimeError as exc:  # a round that assigns it fails alone; the node keeps serving
                log.warning("shard %d does not load yet (%s); trying again when a round assigns it", shard, exc)
        net = config.network
        peer = await Peer.create(
            data_dir, listen=listen, bootstrap=coordinators, timeout=net.timeout, max_blob_bytes=net.max_message_size
        )
        url = mqtt_url or net.mqtt_url or DEFAULT_MQTT_URL
        node = cls(node_id, config, identity, engine, peer, checkpoints, start_round, url,
                   pinned_shard=data_partition, own_data=data is not None)
        try:
            await node.bus.connect()
        except BaseException:
            await peer.close()
            raise
        await asyncio.to_thread(node._resume)
        node.audit = AuditLog.open(data_dir, identity)
        node.audit.append("trainer_started", node_id=node_id, job_id=config.job_id,
                          coordinator_key=config.coordinator_key, data_partition=data_partition)
        node.heartbeat.start(node.bus)
        node.metrics_file.start()
        log.info("trainer %s (%s) up at %s: task %s on %s, %s", node_id, identity.network_id, peer.address_str,
                 task.name, engine.device, f"{len(data)} own samples" if data is not None else
                 f"shard {data_partition}" if data_partition is not None else "shard assigned per round")
        return node

    def _heartbeat_info(self) -> dict[str, Any]:
        return {"round": self.current_round, "training": self.is_training, "addr": self.peer.address_str}

    def _resume(self) -> None:
        """Continue from the newest checkpoint that verifies and fits this model (others are skipped)."""
        start_after = self.last_submitted_round  # --round N may ask to skip further ahead
        for name in reversed(self.checkpoints.list()):
            try:
                self._apply_checkpoint(self.checkpoints.load(name))
            except (TrainerError, KeyError, TypeError, ValueError) as exc:
                log.warning("checkpoint %s not used: %s", name, exc)
                self.checkpoints.skipped += 1
                continue
            self.last_submitted_round = max(start_after, self.last_submitted_round)
            log.info("resumed from checkpoint %s (last submitted round %d)", name, self.last_submitted_round)
            return

    def _apply_checkpoint(self, payload: dict) -> None:
        """Model, optimizer and data position, plus what was last submitted (to re-sign, not retrain)."""
        self.engine.load_state_dict(payload["engine"])
        self.last_submitted_round = int(payload["last_submitted_round"])
        self.rounds_trained = int(payload.get("rounds_trained", 0))
        last = payload.get("last_update")
        try:
            self._last_update = UpdateRecord.model_validate(last) if last else None
        except ValueError:
            self._last_update = None
        residual = payload.get("codec_residual")
        if self.feedback is not None and isinstance(residual, dict) and residual:
            kept = self.feedback.load(residual, self.engine.shapes)
            log.info("restored the error-feedback residual (%d of %d tensors, norm %.4g)", kept, len(residual),
                     self.feedback.norm())

    async def __aenter__(self) -> "TrainerNode":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- public API --------------------------------------------------------------------
    def get_status(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "network_id": self.identity.network_id,
            "public_key": self.identity.public_key_hex,
            "address": self.peer.address_str,
            "current_round": self.current_round,
            "current_epoch": self.engine.epochs_done,
            "steps_done": self.engine.steps_done,
            "is_training": self.is_training,
            "rounds_trained": self.rounds_trained,
            "last_submitted_round": self.last_submitted_round,
            "dropped_messages": dict(self.dropped),
        }

    def get_training_metrics(self) -> dict[str, float]:
        """The last round's local training: mean loss, throughput, samples and optimizer steps."""
        return {
            "loss": self.metrics.loss,
            "samples_per_second": self.metrics.samples_per_second,
            "tokens_per_second": self.metrics.tokens_per_second,
            "num_samples": self.metrics.num_samples,
            "steps": self.metrics.steps,
        }

    def _metrics(self) -> dict:
        return {"role": "trainer", **self.get_status(), "training": self.get_training_metrics(),
                "utilization": self.utilization.metrics(), "overlap": dict(self.overlap_counts),
                "model_fetch": self.model_fetcher.metrics(), **self.peer.metrics(), "bus": self.bus.metrics,
                "state": self.checkpoints.metrics()}

    async def save_checkpoint(self, name: str) -> Path:
        state = await asyncio.to_thread(self.engine.state_dict)
        payload = {"engine": state, "last_submitted_round": self.last_submitted_round, "rounds_trained": self.rounds_trained,
                   "last_update": self._last_update.model_dump() if self._last_update else None,
                   "codec_residual": self.feedback.residual if self.feedback is not None else {}}
        self._checkpointed_at = time.monotonic()
        return await asyncio.to_thread(self.checkpoints.save, name, payload)

    async def load_checkpoint(self, name: str) -> None:
        payload = await asyncio.to_thread(self.checkpoints.load, name)
        await asyncio.to_thread(self._apply_checkpoint, payload)

    def list_checkpoints(self) -> list[str]:
        return self.checkpoints.list()

    async def start_training(self) -> None:
        """Follow the coordinator's rounds until the job finishes or ``stop()`` is called."""
        await self.bus.subscribe(self.topics.announce)
        await self.bus.subscribe(self.topics.committed)
        listener = asyncio.create_task(self._listen(), name=f"{self.node_id}:listen")
        try:
            while not self._finished.is_set():
                await self._wake.wait()
                self._wake.clear()
                pending, self._pending = self._pending, None
                if pending is not None:
                    await self._run_round(*pending)
                if listener.done():
                    listener.result()  # surface a dead listener instead of idling forever
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    def stop(self) -> None:
        self._finished.set()
        self._wake.set()

    async def close(self) -> None:
        self.stop()
        if self._background:  # let in-flight DHT puts and resends finish, briefly
            _, late = await asyncio.wait(set(self._background), timeout=2.0)
            for task in late:
                task.cancel()
        ahead, self._ahead = self._ahead, None
        if ahead is not None:  # its thread cannot be cancelled; the engine is free once it ends
            with contextlib.suppress(PrimeError, asyncio.CancelledError):
                await ahead.task
        await self.metrics_file.stop()
        await self.heartbeat.stop()
        await self.bus.close()
        await self.peer.close()
        await asyncio.to_thread(self.engine.close)  # other ranks of a torchrun node return
        if self.audit is not None:
            self.audit.close()

    # -- the round ---------------------------------------------------------------------
    def _drop(self, reason: str, detail: object) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        log.warning("dropped %s: %s", reason, detail)
        # Refusals of what the pinned coordinator signed (junk anyone can send is only counted).
        if reason in AUDITED_DROPS and self.audit is not None and self.dropped[reason] <= MAX_AUDITED_DROPS:
            self.audit.append("round_refused", reason=reason, detail=str(detail))

    async def _listen(self) -> None:
        async for topic, payload in self.bus.messages():
            try:
                if topic == self.topics.announce:
                    envelope, inline = parcel.unpack(payload, max_blob_bytes=self.config.network.inline_blob_max_bytes)
                    record, _ = RoundAnnouncement.open(envelope, signer=self.coordinator_key)
                    if self._fresh(record, self.config.federated.round_timeout):
                        self._on_announcement(record, inline)
                elif topic == self.topics.committed:
                    committed, _ = RoundCommitted.open(payload, signer=self.coordinator_key)
                    if not self._fresh(committed, COMMITTED_TTL) or committed.term < self.highest_term:
                        continue
                    if committed.job_id == self.config.job_id and committed.job_finished:
                        log.info("job %s finished at round %d", committed.job_id, committed.round)
                        self.stop()
            except DecodeError as exc:
                self._drop("bad_" + topic.rsplit("/", 1)[-1], exc)

    def _fresh(self, record: RoundAnnouncement | RoundCommitted, max_ttl: float) -> bool:
        stale = freshness_error(record.issued, record.expires, time.time(),
                                max_skew=self.config.security.max_clock_skew, max_ttl=max_ttl)
        if stale:
            self._drop(f"{stale}_{type(record).__name__}", f"round {record.round}")
        return stale is None

    def _on_announcement(self, ann: RoundAnnouncement, inline: bytes | None = None) -> None:
        if ann.job_id != self.config.job_id:
            return self._drop("wrong_job", ann.job_id)
        if ann.term < self.highest_term:
            return self._drop("old_term", f"term {ann.term} < {self.highest_term}")
        self.highest_term = ann.term
        self.current_round = max(self.current_round, ann.round)
        if self.identity.public_key not in ann.selected or self._answer_if_submitted(ann):
            return
        if ann.config_digest != self.terms_digest:
            self._drop("config_mismatch", f"round {ann.round}: the job's terms differ from this node's config")
            if ann.config_digest not in self._explained:
                self._explained.add(ann.config_digest)
                self._spawn(self._explain_mismatch(ann))
            return
        shard = ann.shard_of(self.identity.public_key)
        if self.pinned_shard is not None and shard != self.pinned_shard and not self.own_data:
            return self._drop("shard_mismatch", f"round {ann.round} assigns shard {shard}, but this node "
                              f"trains on shard {self.pinned_shard} only (--data-partition); not training "
                              f"on another trainer's shard")
        max_epochs = self.config.training.max_epochs
        if max_epochs and self.engine.epochs_done >= max_epochs:
            return
        self._pending = (ann, inline)
        self._wake.set()

    def _answer_if_submitted(self, ann: RoundAnnouncement) -> bool:
        """True if this round was already submitted; then, if we still hold that update, resend it.

        A re-announced round (coordinator restarted, standby took over) gets the same update
        re-signed for the announcement's term: never retrained, so never a second, different update.
        """
        if ann.round > self.last_submitted_round:
            return False
        last = self._last_update
        if last and last.round == ann.round and last.model_version == ann.model_version:
            now = time.time()
            again = last.model_copy(update={"term": ann.term, "issued": now,
                                            "expires": now + self.config.security.record_ttl})
            self._spawn(self.bus.publish(self.topics.updates, again.seal(self.identity).to_bytes()))
        return True

    async def _explain_mismatch(self, ann: RoundAnnouncement) -> None:
        """Fetch the coordinator's terms (a blob named by the digest it signed) and log what differs."""
        net = self.config.network
        try:
            data = await fetch_verified([parse_hostport(p) for p in ann.providers], ann.config_digest,
                                        self.peer.blobs, max_bytes=1 << 20, timeout=net.timeout)
            theirs = json.loads(bytes(data))
        except (BlobError, ValueError) as exc:
            log.error("round %d: this node's job config differs from the coordinator's (their terms could not be "
                      "fetched: %s); not training", ann.round, exc)
            return
        lines = differences(self.terms, theirs) if isinstance(theirs, dict) else ["(unreadable terms)"]
        log.error("round %d: this node's job config differs from the coordinator's; not training until it "
                  "matches:\n  %s", ann.round, "\n  ".join(lines))

    def _shard_for(self, ann: RoundAnnouncement) -> int | None:
        """The shard to train on this round (None: the node's own data)."""
        return None if self.own_data else ann.shard_of(self.identity.public_key)

    async def _run_round(self, ann: RoundAnnouncement, inline: bytes | None = None) -> None:
        if self._answer_if_submitted(ann):  # queued while we trained the same round for an earlier announcement
            return
        if time.time() > ann.deadline:
            return self._drop("past_deadline", f"round {ann.round}")
        if ann.manifest_digest is not None and not self.own_data and not await self._data_is_the_jobs(ann):
            return
        net = self.config.network
        began = time.monotonic()
        self.is_training = True
        ahead: AheadBlock | None = None
        early = False  # the next block started before this update was sent
        try:
            shard = self._shard_for(ann)
            ahead = await self._take_ahead(ann.round, shard)
            if shard is not None and ahead is None:
                await asyncio.to_thread(self.engine.use_shard, shard, ann.num_shards)
            clock = time.perf_counter()
            model_bytes = await self._model_bytes(ann, inline)  # fetched while a block trained ahead runs on
            fetch_s, clock = time.perf_counter() - clock, time.perf_counter()
            global_state = await run_sized(len(model_bytes), self._decode_model, model_bytes)
            decode_s = time.perf_counter() - clock
            if ahead is None:
                train_started = time.perf_counter()
                delta, metrics = await self.local_update(ann, global_state)
                train_seconds = time.perf_counter() - train_started
                next_start = None  # a block trained ahead goes on from where this round ended
            else:  # the block's progress is this round's update; the next block starts from global + progress
                delta, metrics, train_seconds = await ahead.task
                next_start = await run_sized(state_bytes(delta), rebased, global_state, delta)
            peak = peak_memory_bytes(self.engine.device)  # since the last round's measurement (blocks ahead too)
            reset_peak(self.engine.device)
            if self._over_memory_budget(ann.round, peak):
                return
            # Overlapped and no checkpoint due (it must see the engine between blocks): the next block
            # starts now, and this update is encoded, stored and published while it trains.
            early = self.config.federated.overlap and not self._checkpoint_due()
            if early:
                self._train_ahead(ann, shard, next_start)
            clock = time.perf_counter()
            parts, residual = await run_sized(state_bytes(delta), self._encode_update, delta)
            digest = await asyncio.to_thread(self.peer.blobs.put_parts, parts)
            size = tensors.parts_size(parts)
            encode_s = time.perf_counter() - clock
        except PrimeError as exc:
            self.dropped["abandoned_round"] = self.dropped.get("abandoned_round", 0) + 1
            log.error("round %d abandoned: %s", ann.round, exc)
            if early and self._ahead is not None:  # it followed an update that was never sent
                self._ahead.void = f"round {ann.round}'s update it followed was not sent"
            elif ahead is not None and self._ahead is None and _succeeded_or_running(ahead.task):
                self._ahead = ahead  # still this round's, should it be announced again
            return
        finally:
            self.is_training = False
        self.metrics = metrics
        self.rounds_trained += 1
        record = UpdateRecord(
            job_id=self.config.job_id,
            term=ann.term,
            round=ann.round,
            model_version=ann.model_version,
            node_name=self.node_id[:64],
            blob_digest=digest,
            blob_size=size,
            codec=self.update_codec.name,
            num_samples=metrics.num_samples,
            shard=shard,
            metrics={"loss": metrics.loss, "steps": float(metrics.steps), "train_seconds": train_seconds},
            providers=[self.peer.address_str],
            issued=(now := time.time()),
            expires=now + self.config.security.record_ttl,
            device_seconds=train_seconds * self.engine.world_size,
            devices=self.engine.world_size,
            device_kind=self.device_kind,
            peak_memory_bytes=peak,
        )
        sealed = record.seal(self.identity).to_bytes()
        await self._publish_update(ann.round, sealed, b"".join(parts) if net.rides_inline(size) else None)
        self.last_submitted_round = ann.round
        self._last_update = record
        if self.feedback is not None:  # sent: what it left out carries over (and into the checkpoint)
            self.feedback.adopt(residual)
        self.overlap_counts["blocks_sent"] += ahead is not None
        use = self.utilization.submitted(ann.round, metrics.seconds, began, time.monotonic(), ahead is not None)
        if not early:
            if self._checkpoint_due():
                # Between blocks, so model and optimizer are consistent; a node restored from it drops
                # the overlap for one round (it trains round r+1 from the announced model).
                await self.save_checkpoint(f"{AUTO_PREFIX}{ann.round:06d}")
            self._train_ahead(ann, shard, next_start)
        log.info("round %d: trained %d samples (%d steps%s) on %s, loss %.4f, update %s…, %.0f%% of %.2fs in "
                 "inner steps (model fetch %.2fs, decode %.2fs, train %.2fs incl. state load %.2fs and gather "
                 "%.2fs, encode and store %.2fs)", ann.round,
                 metrics.num_samples, metrics.steps, ", trained ahead" if ahead else "",
                 "own data" if shard is None else f"shard {shard}", metrics.loss, digest[:12],
                 100 * use.fraction, use.wall_seconds, fetch_s, decode_s, train_seconds, metrics.load_seconds,
                 metrics.gather_seconds, encode_s)

    def _checkpoint_due(self) -> bool:
        """Whether ``fault_tolerance.checkpoint_interval`` seconds have passed since the last checkpoint."""
        return time.monotonic() - self._checkpointed_at >= self.config.fault_tolerance.checkpoint_interval

    async def _data_is_the_jobs(self, ann: RoundAnnouncement) -> bool:
        """Whether this node's files for its shard (and its task source) are the job manifest's; if
        not, say which differ and skip the round (the node keeps following later rounds)."""
        shard = ann.shard_of(self.identity.public_key)
        lines = await self.data_check.differences(ann, shard)
        if not lines:
            return True
        self.dropped["data_mismatch"] = self.dropped.get("data_mismatch", 0) + 1
        log.error("round %d: this node's data for shard %d is not the job's (manifest %s…); not training:\n  %s",
                  ann.round, shard, ann.manifest_digest[:16], "\n  ".join(lines))
        return False

    def _over_memory_budget(self, round_number: int, peak: int) -> bool:
        """True (and logged) if this round peaked above ``budget.memory_bytes_per_trainer``: the
        coordinator would refuse the update, so it is not sent."""
        limit = self.config.budget.memory_bytes_per_trainer
        if not limit or peak <= limit:
            return False
        self.dropped["over_memory_budget"] = self.dropped.get("over_memory_budget", 0) + 1
        log.error("round %d: peak memory %d bytes exceeds budget.memory_bytes_per_trainer %d; not sending the update",
                  round_number, peak, limit)
        return True

    async def _take_ahead(self, round_number: int, shard: int | None) -> AheadBlock | None:
        """The block trained ahead, if it may be this round's update; else None, once an unusable
        one has ended (the engine is busy until then)."""
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return None
        why = ahead.unusable_for(round_number, shard)
        if why is None:
            return ahead
        self.overlap_counts["blocks_dropped"] += 1
        log.info("round %d: not sending the block trained ahead (%s); training from the announced model",
                 round_number, why)
        with contextlib.suppress(PrimeError):
            await ahead.task
        return None

    def _train_ahead(self, ann: RoundAnnouncement, shard: int | None, start: dict | None) -> None:
        """With ``federated.overlap``, start the next block now: from ``start``, else from the current weights."""
        fed, max_epochs = self.config.federated, self.config.training.max_epochs
        if not fed.overlap or self._finished.is_set() or (ann.total_rounds and ann.round >= ann.total_rounds):
            return
        if max_epochs and self.engine.epochs_done >= max_epochs:
            return
        work = LocalWork.of(fed)

        async def block() -> tuple[dict, TrainMetrics, float]:
            started = time.perf_counter()
            delta, metrics = await asyncio.to_thread(self.engine.train, start, work)
            return delta, metrics, time.perf_counter() - started

        self._ahead = AheadBlock(ann.round, shard, asyncio.create_task(block(), name=f"{self.node_id}:ahead"))

    async def local_update(self, ann: RoundAnnouncement, global_state: dict) -> tuple[dict, TrainMetrics]:
        """This round's local work: the delta to send and the metrics (sample count) to claim.

        The one seam where a subclass changes what a trainer sends (the attack harness in
        ``benchmarks/byzantine.py`` does; honest nodes never override it); a block trained ahead
        (``federated.overlap``) does not pass through it. The round key names the
        round for ``training.reproducible_rounds`` (the shard the announcement assigns this key)."""
        shard = ann.shard_of(self.identity.public_key)  # None only if not selected: refused when reproducible
        key = RoundKey(self.config.job_id, ann.round, -1 if shard is None else shard)
        return await asyncio.to_thread(self.engine.train, global_state, LocalWork.of(self.config.federated),
                                       round_key=key)

    def _decode_model(self, data: bytes | memoryview) -> dict:
        """The announced model in the job's model codec, decoded (what this round trains from)."""
        bound = 8 * sum(math.prod(shape) for shape in self.engine.shapes.values())  # float64 at most
        return codecs.decode(data, max_bytes=self.config.network.max_message_size, max_decoded_bytes=bound,
                             expect=self.model_codec)

    def _encode_update(self, delta: dict) -> tuple[list, dict | None]:
        """The update blob (pieces) in the job's update codec, and the error-feedback residual it leaves."""
        compress = self.config.network.enable_compression
        if self.feedback is not None:
            return self.feedback.encode(delta, compress=compress)
        return codecs.encode(self.update_codec, delta, compress=compress), None

    async def _model_bytes(self, ann: RoundAnnouncement, inline: bytes | None) -> bytes | memoryview:
        """The announced model: the inline copy if it is the signed one, else fetched by digest."""
        if inline is not None:
            if await parcel.is_signed_blob(inline, ann.model_digest, ann.model_size):
                self.model_fetcher.counts["inline"] += 1
                return inline
            self._drop("bad_inline_model", f"round {ann.round}: inline bytes do not match the signed digest")
        return await self.model_fetcher.fetch(ann)

    async def _publish_update(self, round_number: int, sealed: bytes, inline: bytes | None) -> None:
        """The bus notice (the fast path, the blob inline if small) now; the DHT pointer (the
        durable path) alongside."""
        name = dht_update_name(self.config.job_id, round_number)
        ttl = max(self.config.federated.round_timeout * 4, 600.0)
        self._spawn(self._dht_put(name, {"update": sealed}, ttl, round_number))
        await self.bus.publish(self.topics.updates, parcel.pack(sealed, inline))

    def _spawn(self, coro: Coroutine) -> asyncio.Task:
        """Background work (DHT puts, resends) that must not hold up a round; ``close`` waits briefly."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _dht_put(self, name: str, value: dict, ttl: float, round_number: int) -> None:
        await self.peer.put_quietly(self.identity, name, value, ttl_s=ttl, what=f"round-{round_number} update",
                                    max_retries=self.config.fault_tolerance.max_retries)


def _succeeded_or_running(task: asyncio.Task) -> bool:
    return not task.done() or (not task.cancelled() and task.exception() is None)
