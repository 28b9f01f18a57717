"""The job manifest on the coordinator's side: served by digest, named in every announcement.

The canonical manifest (``prime/core/manifest.py``) is stored as a blob whose digest is the
manifest's, so trainers fetch it from the coordinator like the terms blob; the digest and the
dataset are recorded in the database for ``prime-coordinator status``.
"""

from __future__ import annotations

import asyncio
import json

from prime.coordinator.services import CoordinatorServices
from prime.core.errors import CoordinatorError
from prime.core.manifest import Manifest, canonical, manifest_digest

MANIFEST_KEY = "manifest"


async def publish_manifest(services: CoordinatorServices, manifest: Manifest) -> str:
    """Store the manifest where trainers can fetch it; its digest, for the announcements."""
    digest = manifest_digest(manifest)
    stored = await asyncio.to_thread(services.peer.blobs.put_bytes, canonical(manifest))
    if stored != digest:  # the blob store names blobs by SHA-256 of their bytes, as the manifest digest is
        raise CoordinatorError(f"manifest stored as {stored}, expected {digest}")
    summary = {"digest": digest, "dataset": manifest.dataset.model_dump(), "shards": len(manifest.shards),
               "compute_target": manifest.compute_target, "prime_version": manifest.prime_version,
               "task": manifest.task.model_dump()}
    services.store.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)",
                              (MANIFEST_KEY, json.dumps(summary, sort_keys=True)))
    return digest
