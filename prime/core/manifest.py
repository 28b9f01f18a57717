"""The job manifest: what a job's results depend on beyond its config, pinned by digest.

The agreed terms (``agreement.py``) say *how* to train; the manifest says *on what*: the data
set with its version and, per shard, a content digest of every file a trainer's shard reads;
the seed; the compute target; the prime version; the task's entry point and a digest of its
source. The coordinator signs the manifest's digest into every announcement and serves the
canonical document as a blob named by that digest, so a trainer fetches it, hashes its own
files, and refuses to train on data that is not the job's, naming the file that differs.

Pure: no disk and no sockets (``prime/tasks/datafiles.py`` hashes files; ``prime/manifest_cli.py``
builds a manifest). The decoder is bounded and strict, since the bytes come from the network.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from prime.core.errors import DecodeError

FORMAT = 1
#: The largest manifest a trainer accepts (a stdlib shard lists hundreds of files; this is far above).
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
_DIGEST = r"^[0-9a-f]{64}$"
Digest = Annotated[str, StringConstraints(pattern=_DIGEST)]
#: A file's name as the task reports it (a path relative to its data root): printable, bounded.
FileName = Annotated[str, StringConstraints(min_length=1, max_length=512, pattern=r"^[^\x00-\x1f]+$")]
ShardIndex = Annotated[str, StringConstraints(pattern=r"^(0|[1-9][0-9]{0,5})$")]


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DatasetRef(_Part):
    name: str = Field(max_length=200)
    version: str = Field(max_length=200)


class TaskRef(_Part):
    #: ``module:attr`` of the task's ``TaskSpec`` (built-in tasks too: ``prime.tasks.digits:spec``).
    entry_point: str = Field(max_length=300)
    #: SHA-256 of the source file that defines the spec.
    source_digest: Digest
    #: That file's name, to say which file differs.
    source_file: str = Field(max_length=300)


class Manifest(_Part):
    """One job's manifest. ``shards[str(i)]`` maps each file shard ``i`` reads to its SHA-256."""

    format: int = Field(FORMAT, ge=1, le=FORMAT)
    job_id: str = Field(max_length=64)
    dataset: DatasetRef
    shards: dict[ShardIndex, dict[FileName, Digest]] = Field(max_length=65536)
    seed: int
    compute_target: str = Field(max_length=200)
    prime_version: str = Field(max_length=64)
    task: TaskRef

    def shard_files(self, index: int) -> dict[str, str] | None:
        """The files (name → digest) shard ``index`` reads, or None if the manifest has no such shard."""
        return self.shards.get(str(index))


def canonical(manifest: Manifest) -> bytes:
    """Sorted-key compact JSON: the bytes that are hashed, stored and served."""
    return json.dumps(manifest.model_dump(mode="json"), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True).encode()


def manifest_digest(manifest: Manifest) -> str:
    return hashlib.sha256(canonical(manifest)).hexdigest()


def decode(data: bytes | bytearray | memoryview, *, max_bytes: int = MAX_MANIFEST_BYTES) -> Manifest:
    """A manifest from bytes off the network or disk: size-bounded, strictly validated."""
    if len(data) > max_bytes:
        raise DecodeError(f"manifest of {len(data)} bytes exceeds {max_bytes}")
    try:
        value = json.loads(bytes(data))
    except (ValueError, RecursionError) as exc:
        raise DecodeError(f"manifest is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise DecodeError("manifest must be a JSON object")
    try:
        return Manifest.model_validate(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise DecodeError(f"malformed manifest: {where}: {first['msg']}") from None


def data_differences(here: dict[str, str], manifest: Manifest, shard: int) -> list[str]:
    """One line per file of ``shard`` whose digest here is not the manifest's
    (``data file part-2.jsonl: here 1f2e…, manifest 9a0b…``); empty when the data matches."""
    expected = manifest.shard_files(shard)
    if expected is None:
        return [f"shard {shard}: not in the manifest (it lists shards {', '.join(sorted(manifest.shards, key=int))})"]
    lines = []
    for name in sorted(set(here) | set(expected)):
        mine, theirs = here.get(name, "(not read here)"), expected.get(name, "(not in the manifest)")
        if mine != theirs:
            lines.append(f"data file {name}: here {mine}, manifest {theirs}")
    return lines
