"""``prime manifest build`` and ``prime manifest check``: make a job's manifest, or test data against it.

``build`` hashes every file each of the job's shards reads (through the task's ``data_source``),
the task's source, and records the data set and its version, the seed, the compute target and
the prime version (``prime/core/manifest.py``); the coordinator is then started with
``--manifest FILE`` and signs its digest into every announcement. ``check`` is what a trainer does
before each round, run by hand: it names every file of a shard that differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import prime
from prime.atomic import write_atomic
from prime.core.config import JobConfig, load_config
from prime.core.errors import ConfigError, PrimeError, TaskError
from prime.core.manifest import DatasetRef, Manifest, TaskRef, canonical, data_differences, decode, manifest_digest
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


def _build(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    manifest = build_manifest(config, data_path=args.data_path, compute_target=args.compute_target,
                              dataset_version=args.dataset_version)
    write_atomic(args.out, canonical(manifest))
    files = sum(len(v) for v in manifest.shards.values())
    print(json.dumps({"manifest": str(args.out), "digest": manifest_digest(manifest), "shards": len(manifest.shards),
                      "files": files, "dataset": manifest.dataset.model_dump()}))
    return 0


def _check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    manifest = load_manifest(args.manifest, config)
    shard = Shard(args.shard, config.num_shards, args.data_path)
    lines = data_differences(shard_digests(task_of(config), shard), manifest, args.shard)
    for line in lines:
        print(line)
    if not lines:
        print(f"shard {args.shard}: every file matches manifest {manifest_digest(manifest)[:16]}…")
    return 1 if lines else 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="manifest_command", required=True)
    b = sub.add_parser("build", help="hash every shard's files and the task's source into a manifest")
    b.add_argument("--config", required=True, type=Path)
    b.add_argument("--data-path", type=Path, help="the data directory (tasks that read files; default: built-in)")
    b.add_argument("--compute-target", default="", help="what the job runs on, e.g. '4x nvidia-h200' (recorded)")
    b.add_argument("--dataset-version", help="override the version the task reports for its data set")
    b.add_argument("--out", type=Path, default=Path("manifest.json"))
    b.set_defaults(manifest_func=_build)
    c = sub.add_parser("check", help="compare one shard's files here with a manifest; name each that differs")
    c.add_argument("--config", required=True, type=Path)
    c.add_argument("--manifest", required=True, type=Path)
    c.add_argument("--shard", required=True, type=int)
    c.add_argument("--data-path", type=Path)
    c.set_defaults(manifest_func=_check)


def run(args: argparse.Namespace) -> int:
    try:
        return args.manifest_func(args)
    except PrimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
