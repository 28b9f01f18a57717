"""Building a job's manifest from its config and data, and loading one for a job (the coordinator's
``--manifest``, ``prime manifest check``): a manifest of another job, seed or task is refused."""

from __future__ import annotations

from pathlib import Path

import prime
from prime.core.config import JobConfig
from prime.core.errors import ConfigError, PrimeError, TaskError
from prime.core.manifest import DatasetRef, Manifest, TaskRef, decode
from prime.tasks import Shard, task_of
from prime.tasks.datafiles import MISSING, require_source, shard_digests, task_source


def build_manifest(config: JobConfig, *, data_path: Path | None = None, compute_target: str = "",
                   dataset_version: str | None = None) -> Manifest:
    """The manifest of ``config``'s job over the data under ``data_path`` (the task's own if None)."""
    task = task_of(config)
    count = config.num_shards
    first = require_source(task, Shard(0, count, data_path))
    shards = {str(i): shard_digests(task, Shard(i, count, data_path)) for i in range(count)}
    missing = sorted({name for files in shards.values() for name, digest in files.items() if digest == MISSING})
    if missing:
        raise TaskError(f"cannot build the manifest: data file(s) {', '.join(missing)} missing under "
                        f"{data_path or 'the task data root'}")
    source_file, source_digest = task_source(task)
    return Manifest(
        job_id=config.job_id,
        dataset=DatasetRef(name=first.name, version=first.version if dataset_version is None else dataset_version),
        shards=shards, seed=config.training.seed, compute_target=compute_target, prime_version=prime.__version__,
        task=TaskRef(entry_point=config.task.name, source_digest=source_digest, source_file=source_file),
    )


def load_manifest(path: Path, config: JobConfig) -> Manifest:
    """A manifest file for ``config``'s job; one built for another job, seed or task is an error."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read manifest {path}: {exc.strerror or exc}") from None
    try:
        manifest = decode(data)
    except PrimeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    wrong = [f"{what} {mine!r} (the job's is {theirs!r})" for what, mine, theirs in (
        ("job_id", manifest.job_id, config.job_id), ("seed", manifest.seed, config.training.seed),
        ("task entry point", manifest.task.entry_point, config.task.name)) if mine != theirs]
    if wrong:
        raise ConfigError(f"{path} is not {config.source}'s manifest: it has {'; '.join(wrong)}; "
                          f"rebuild it with prime manifest build --config {config.source}")
    count = config.num_shards
    missing = [i for i in range(count) if manifest.shard_files(i) is None]
    if missing:
        raise ConfigError(f"{path} lists no files for shard(s) {missing} of the job's {count}; rebuild it")
    return manifest
