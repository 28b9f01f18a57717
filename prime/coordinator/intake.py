"""Update intake: from signed bytes (bus notice, DHT record, recovered) to a counted contribution.

Every update goes through the same gate, whichever path brought it: verify the
envelope, refuse replays and duplicates, check the record against the open round
(``verification.check_record``), take the blob (inline in the bus notice if it hashes
to the signed digest, else fetched by digest), decode it with the job's update codec
(``prime/codecs``; another codec is ``wrong_codec``) and check the tensors
(``verification.check_tensors``). Then judge what it is worth: refuse an update that
changes nothing or copies another trainer's, score it on held-out data (``scoring.py``,
refusing harmful ones), spot-check a sample of them (``spotcheck.py``), bound its
claimed sample count, fold it into the round's strategy and persist it as pending, so a
restarted coordinator reuses it. Refusals are counted and recorded with their reason
(``prime/core/refusals.py``); a refused selected trainer is no longer waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import torch

from prime import codecs
from prime.coordinator.rounds import RoundCollector
from prime.coordinator.scoring import ContributionScorer
from prime.coordinator.similarity import CopyDetector, is_empty
from prime.coordinator.store import CoordinatorStore
from prime.coordinator.verification import check_record, check_tensors
from prime.core import parcel
from prime.core.aggregation import Contribution
from prime.core.config import JobConfig
from prime.core.errors import BlobError, DecodeError, PrimeError, SignatureError, UpdateRejected
from prime.core.net import parse_hostport
from prime.core.offload import run_sized, state_bytes
from prime.core.records import UpdateRecord, dht_update_name
from prime.core.refusals import Refusal
from prime.blobs.fetch import fetch_verified
from prime.dht.peer import Peer

log = logging.getLogger(__name__)

#: Rejections without a verifiable, admitted sender written to the database per round; the rest are counted.
MAX_UNATTRIBUTED_RECORDED = 20

Spawn = Callable[[Coroutine[Any, Any, Any]], asyncio.Task]


class UpdateIntake:
    def __init__(self, config: JobConfig, store: CoordinatorStore, peer: Peer, spawn: Spawn) -> None:
        self.config = config
        self.store = store
        self.peer = peer
        self.spawn = spawn
        self.collector: RoundCollector | None = None  # the open round, if any
        self.global_state: dict | None = None  # the model the open round started from
        self.received_state: dict | None = None  # what trainers decoded from its broadcast (spot checks start there)
        self.update_codec = codecs.from_config(config.compression.update)
        self._decoded_cap = 0  # bytes an update may decode to: the global model's
        self.lock = asyncio.Lock()  # serialises folding into the strategy with closing the round
        self.accepted = 0
        self.late_copies = 0
        self.early = 0
        self.blob_sources: Counter[str] = Counter()  # inline / fetched: how accepted updates' blobs arrived
        self.bad_inline_blobs = 0  # inline bytes that did not hash to the signed digest (then fetched)
        self.rejected: Counter[str] = Counter()
        self.spot_checks: Counter[str] = Counter()  # passed / failed / inconclusive
        self._unattributed: Counter[int] = Counter()
        self.scorer: ContributionScorer | None = None  # the round driver provides the judges
        self._writes: dict[str, asyncio.Task] = {}  # blob digest -> its background write to the store
        self.copies = CopyDetector()
        self.spot_checker = None
        self.audit = None  # the node's audit log (``auditing.CoordinatorAudit``), set by the daemon

    async def open_round(self, collector: RoundCollector, global_state: dict, received_state: dict | None = None
                         ) -> None:
        """Start taking updates for ``collector``'s announcement (abandons any open one). ``received_state``
        is what trainers decode from the broadcast when the model codec is lossy (default: the global state)."""
        async with self.lock:
            self.collector = None
        self._decoded_cap = state_bytes(global_state)
        if self.scorer is not None:
            share = 1.0 / max(1, len(collector.announcement.selected))
            await run_sized(state_bytes(global_state), self.scorer.begin_round, collector.round, global_state, share)
        self._writes = {}
        self.copies.begin_round(collector.round, global_state)
        previous = self.store.committed_digests(collector.round - 1)  # a resent one of these is stale
        await asyncio.to_thread(self.copies.remember_previous, list(self.read_back(previous)))
        collector.strategy.begin(global_state)
        self.collector, self.global_state = collector, global_state
        self.received_state = global_state if received_state is None else received_state

    async def close_round(self) -> None:
        async with self.lock:
            self.collector = None

    def metrics(self) -> dict:
        return {"accepted": self.accepted, "rejected": dict(self.rejected), "late_copies": self.late_copies,
                "early": self.early, "blob_sources": dict(self.blob_sources),
                "bad_inline_blobs": self.bad_inline_blobs, "spot_checks": dict(self.spot_checks)}

    # -- the gate ----------------------------------------------------------------------
    async def receive_parcel(self, payload: bytes) -> None:
        """A bus notice: the signed record, maybe with its blob inline."""
        try:
            envelope, inline = parcel.unpack(payload, max_blob_bytes=self.config.network.inline_blob_max_bytes)
        except DecodeError as exc:
            current = self.collector
            return self._reject(current.round if current else 0, None, "", UpdateRejected(Refusal.MALFORMED, str(exc)))
        await self.receive(envelope, via="bus", inline=inline)

    async def receive(self, payload: bytes, *, via: str, inline: bytes | None = None) -> None:
        current = self.collector
        received = time.perf_counter()
        try:
            record, env = UpdateRecord.open(payload)
        except SignatureError as exc:
            return self._reject(current.round if current else 0, None, "", UpdateRejected(Refusal.BAD_SIGNATURE, str(exc)))
        except DecodeError as exc:
            return self._reject(current.round if current else 0, None, "", UpdateRejected(Refusal.MALFORMED, str(exc)))
        signer = env.signer
        if current is None and record.round == self.store.last_committed_round() + 1:
            # Early, not wrong: answers an announcement made before a restart, and arrived before we
            # (re)opened the round. The trainer re-signs and resends when it sees the new announcement.
            self.early += 1
            return
        try:
            if self._already_committed(record, signer):
                return
            check_record(record, signer, self.config, current.announcement if current else None, time.time())
            if not current.claim(signer, record):
                return  # the same record again (bus and DHT both delivered it)
        except UpdateRejected as rejection:
            return self._reject(record.round, signer, record.node_name, rejection)
        try:
            contribution, score, sketch, source, verify_s = await self._judge(record, signer, inline, current)
            async with self.lock:
                if current is not self.collector:
                    return  # the round closed while we verified
                self.copies.check(signer, record.blob_digest, sketch)  # again: a copy may have landed meanwhile
                try:
                    await run_sized(record.blob_size, current.strategy.add, contribution)
                except ValueError as exc:  # e.g. more updates than an in-memory strategy holds
                    raise UpdateRejected(Refusal.OVER_CAPACITY, str(exc)) from None
                if self.scorer is not None:
                    await run_sized(record.blob_size, self.scorer.add, contribution.delta, contribution.num_samples)
                current.accept(signer, record, score, contribution.num_samples)
                self.copies.accept(signer, record.blob_digest, sketch)
                self.store.add_pending(record.round, signer, payload)
                if self.audit is not None:
                    self.audit.accepted(self.store.db, record.round, signer, record.node_name)
                self.accepted += 1
                self.blob_sources[source] += 1
            log.info("round %d: accepted %s (%d samples claimed, weight %d, score %+.4g, via %s) in %.2fs "
                     "(fetch and verify %.2fs)", record.round, record.node_name, record.num_samples,
                     contribution.num_samples, score, via, time.perf_counter() - received, verify_s)
        except UpdateRejected as rejection:
            current.release(signer)
            self._reject(record.round, signer, record.node_name, rejection)

    async def _judge(self, record: UpdateRecord, signer: bytes, inline: bytes | None,
                     current: RoundCollector) -> tuple[Contribution, float, object, str, float]:
        """Checked tensors, then what they are worth: (contribution, measured score, sketch, blob source,
        seconds to fetch and verify the blob)."""
        started = time.perf_counter()
        delta, source = await self._verify_blob(record, inline, streaming=current.strategy.streaming)
        verify_s = time.perf_counter() - started
        size = record.blob_size
        if await run_sized(size, is_empty, delta):
            raise UpdateRejected(Refusal.EMPTY_UPDATE, "every value of the update is zero")
        sketch = await run_sized(size, self.copies.sketch, delta)
        self.copies.check(signer, record.blob_digest, sketch)
        score = await run_sized(size, self.scorer.gate, delta) if self.scorer is not None else 0.0
        ann = current.announcement
        if self.spot_checker is not None and self.spot_checker.sampled(record.round, signer):
            verdict = await asyncio.to_thread(self.spot_checker.check, self.received_state, delta,
                                              ann.shard_of(signer), ann.num_shards, record.round)
            self.spot_checks[verdict.outcome] += 1
            if verdict.inconclusive:
                log.warning("round %d: spot check of %s inconclusive (not held against it): %s", record.round,
                            record.node_name, verdict.inconclusive)
            elif not verdict.passed:
                raise UpdateRejected(Refusal.FAILED_SPOT_CHECK, f"recomputed the round: relative distance "
                                     f"{verdict.distance:.3g} > tolerance {self.config.verification.tolerance:g}")
        weight = self.config.admission.weight(signer, record.num_samples)
        cap = current.claim_caps.get(signer)
        if cap:  # a claim weighs no more than the work the round asked for
            weight = min(weight, cap)
        return Contribution(signer, delta, max(weight, 1)), score, sketch, source, verify_s

    def _already_committed(self, record: UpdateRecord, signer: bytes) -> bool:
        """True for a harmless late copy of the round just committed; raise for a replay or duplicate."""
        committed = self.store.committed_update_digest(record.round, signer)
        if committed is None:
            return False
        if committed != record.blob_digest:
            raise UpdateRejected(Refusal.DUPLICATE, f"round {record.round} already credited this trainer")
        if record.round < self.store.last_committed_round():
            raise UpdateRejected(Refusal.REPLAY, f"update already committed in round {record.round}")
        self.late_copies += 1  # a straggling copy (bus resend, DHT sweep) of the round just committed
        return True

    async def _verify_blob(self, record: UpdateRecord, inline: bytes | None, *, streaming: bool = False
                           ) -> tuple[Mapping[str, torch.Tensor], str]:
        """The update's checked tensors, and whether its blob came inline or was fetched.

        In a lossy codec, for a streaming strategy, the tensors stay encoded (an
        ``EncodedUpdate`` decodes one each time it is read: every check, the score and the fold
        read it tensor by tensor), so no full float32 copy of the update is ever held; an
        in-memory strategy keeps every update of the round, decoded once here."""
        net = self.config.network
        source, data = "inline", inline  # data: inline bytes, or the fetched blob's verified bytes
        if inline is not None and not await parcel.is_signed_blob(inline, record.blob_digest, record.blob_size):
            self.bad_inline_blobs += 1  # the record may still be good: fetch its blob by digest
            data = None
        if data is None:
            source, data = "fetched", await self._fetch(record)
        if len(data) != record.blob_size:
            raise UpdateRejected(Refusal.SIZE_MISMATCH, f"blob is {len(data)} bytes, record says {record.blob_size}")
        try:
            update = await run_sized(len(data), codecs.open_update, data, max_bytes=net.max_message_size,
                                     max_decoded_bytes=self._decoded_cap, expect=self.update_codec)
        except codecs.CodecMismatch as exc:
            raise UpdateRejected(Refusal.WRONG_CODEC, str(exc)) from None
        except DecodeError as exc:
            raise UpdateRejected(Refusal.UNDECODABLE, str(exc)) from None
        keep_encoded = streaming and not self.update_codec.lossless
        delta = update if keep_encoded else await run_sized(update.nbytes, update.decoded)
        await run_sized(len(data), check_tensors, delta, self.global_state, self.config.security.max_update_norm)
        # Kept on disk so a restarted coordinator reuses pending updates without refetching them;
        # written in the background, off the critical path (if a crash beats the write, recovery
        # fetches the blob from its trainer again).
        self._writes[record.blob_digest] = self.spawn(
            asyncio.to_thread(self.peer.blobs.put_verified, record.blob_digest, data))
        return delta, source

    def read_back(self, digests: list[str]):
        """(digest, delta) of updates kept in the blob store, each an ``EncodedUpdate`` (decoded a
        tensor at a time as it is read); ones no longer there are skipped."""
        for digest in digests:
            try:
                data = self.peer.blobs.map_private(digest, verify=False)  # verified when it arrived
                yield digest, codecs.open_update(data, max_bytes=self.config.network.max_message_size,
                                                 max_decoded_bytes=self._decoded_cap or None)
            except (BlobError, DecodeError, OSError) as exc:
                log.debug("update %s not read back: %s", digest[:12], exc)

    async def kept(self, collector: RoundCollector) -> None:
        """Wait until the accepted updates' blobs are on disk (the leave-one-out pass reads them)."""
        writes = [self._writes[r.blob_digest] for r in collector.accepted.values() if r.blob_digest in self._writes]
        await asyncio.gather(*writes, return_exceptions=True)

    async def _fetch(self, record: UpdateRecord) -> memoryview:
        net = self.config.network
        try:
            providers = [parse_hostport(p) for p in record.providers]
        except ValueError as exc:
            raise UpdateRejected(Refusal.BAD_PROVIDER, str(exc)) from None
        try:
            return await fetch_verified(providers, record.blob_digest, self.peer.blobs,
                                        max_bytes=net.max_message_size, timeout=net.timeout)
        except BlobError as exc:
            reason = {"tampered": Refusal.TAMPERED_BLOB, "oversize": Refusal.OVERSIZE}.get(exc.reason,
                                                                                     Refusal.BLOB_UNAVAILABLE)
            raise UpdateRejected(reason, str(exc)) from None

    def _reject(self, round_number: int, signer: bytes | None, name: str, rejection: UpdateRejected) -> None:
        """Count every refusal; record it in the database unless it is junk past a cap.

        Garbage with no verifiable sender, or signed by a key the job never admitted (fresh keys
        are free), costs an attacker nothing to send, so only the first few per round go to the
        database (and the log); the rest are only counted.
        """
        self.rejected[rejection.reason] += 1
        if signer is None or not self.config.admission.admits(signer):
            self._unattributed[round_number] += 1
            if self._unattributed[round_number] > MAX_UNATTRIBUTED_RECORDED:
                return
        else:  # a verified signature of an admitted key: the open round stops waiting for it
            current = self.collector
            if current is not None and current.round == round_number:
                current.refuse(signer, rejection.reason)
        log.warning("round %d: rejected update from %s: %s", round_number, name or "?", rejection)
        self.store.record_rejection(round_number, signer, name, rejection.reason, rejection.detail)
        if self.audit is not None:
            self.audit.refused(round_number, signer, name, rejection.reason, rejection.detail)

    # -- the DHT path ------------------------------------------------------------------
    async def sweep_dht(self, collector: RoundCollector) -> None:
        """Look in the DHT for selected trainers' update records that no bus notice brought."""
        name = dht_update_name(self.config.job_id, collector.round)
        while True:
            await asyncio.sleep(max(0.5, self.config.federated.round_timeout / 10))
            for key in collector.missing():
                with contextlib.suppress(PrimeError):
                    value = await self.peer.dht.get(key, name)
                    if isinstance(value, dict) and isinstance(value.get("update"), bytes):
                        self.spawn(self.receive(value["update"], via="dht"))
