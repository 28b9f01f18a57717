"""Before a round: is this trainer's data the job's? Its shard's files against the job manifest.

The announcement names the manifest by digest; the trainer fetches it once (a blob, verified
against the digest, bounded and strictly decoded), hashes each file its assigned shard reads and
the task's source, and compares. A file that differs is named with both digests
(``data file part-2.jsonl: here 1f…, manifest 9a…``) and the trainer does not train that round;
it keeps following rounds, so fixing the file (or being assigned another shard) lets it train
again. A different prime version or compute target is worth a warning, not a refusal.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from prime.blobs.fetch import fetch_verified
from prime.core.errors import BlobError, DecodeError, TaskError
from prime.core.manifest import MAX_MANIFEST_BYTES, Manifest, data_differences, decode
from prime.core.net import parse_hostport
from prime.core.records import RoundAnnouncement
from prime.dht.peer import Peer
from prime.tasks.datafiles import shard_digests, task_source
from prime.tasks.spec import Shard, Task

log = logging.getLogger(__name__)


class ManifestCheck:
    def __init__(self, peer: Peer, task: Task, data_path: Path | None, *, timeout: float,
                 prime_version: str, compute_kind: str) -> None:
        self.peer = peer
        self.task = task
        self.data_path = data_path
        self.timeout = timeout
        self.prime_version = prime_version
        self.compute_kind = compute_kind
        self._manifests: dict[str, Manifest] = {}
        self._warned: set[str] = set()

    async def differences(self, ann: RoundAnnouncement, shard: int) -> list[str]:
        """Why this node must not train ``shard`` under ``ann``'s manifest (empty: it matches)."""
        try:
            manifest = await self._manifest(ann)
        except (BlobError, DecodeError) as exc:
            return [f"the job manifest {ann.manifest_digest[:16]}… could not be fetched: {exc}"]
        try:
            here = await asyncio.to_thread(shard_digests, self.task, Shard(shard, ann.num_shards, self.data_path))
            source_file, source_digest = await asyncio.to_thread(task_source, self.task)
        except TaskError as exc:
            return [str(exc)]
        lines = data_differences(here, manifest, shard)
        if source_digest != manifest.task.source_digest:
            lines.append(f"task source {source_file}: here {source_digest}, manifest {manifest.task.source_digest}")
        self._warn_once(manifest)
        return lines

    async def _manifest(self, ann: RoundAnnouncement) -> Manifest:
        digest = ann.manifest_digest
        if digest not in self._manifests:
            providers = [parse_hostport(p) for p in ann.providers]
            data = await fetch_verified(providers, digest, self.peer.blobs, max_bytes=MAX_MANIFEST_BYTES,
                                        timeout=self.timeout)
            self._manifests[digest] = await asyncio.to_thread(decode, bytes(data))
        return self._manifests[digest]

    def _warn_once(self, manifest: Manifest) -> None:
        for what, mine, theirs in (("prime version", self.prime_version, manifest.prime_version),
                                   ("compute target", self.compute_kind, manifest.compute_target)):
            if theirs and theirs != mine and f"{what}:{theirs}" not in self._warned and \
                    not (what == "compute target" and mine in theirs):
                self._warned.add(f"{what}:{theirs}")
                log.warning("the job manifest names %s %r; this node has %r", what, theirs, mine)
