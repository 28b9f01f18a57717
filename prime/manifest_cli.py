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

from prime.atomic import write_atomic
from prime.core.config import load_config
from prime.core.errors import PrimeError
from prime.core.manifest import canonical, data_differences, manifest_digest
from prime.manifests import build_manifest, load_manifest
from prime.tasks import Shard, task_of
from prime.tasks.datafiles import shard_digests


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
