"""``prime verify``: audit a coordinator's committed updates offline by recomputing them.

For each committed update of the chosen rounds (``updates`` in ``coordinator.sqlite``), it
reads the update blob (decoded with its codec) and the model the round started from (round r
starts from model version r − 1, as trainers decoded it from ``compression.model``) out of the
data dir's blob store, recomputes the trainer's round on its shard
with a :class:`~prime.coordinator.spotcheck.SpotChecker` and prints the distance and the
verdict. Anyone holding a copy of the data dir and the job config can run it: the database is
opened read-only, so it is safe next to a running daemon.

Exit status: 0 when no update failed (inconclusive ones do not count against anyone), 1 when
any failed, 2 on a usage or config error.
"""

from __future__ import annotations

import argparse
import json
import math
import secrets
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prime.coordinator.status import open_read_only
from prime.core.errors import BlobError, ConfigError, CoordinatorError, DecodeError, PrimeError
from prime.core.identity import network_id

if TYPE_CHECKING:  # torch is imported only when a check runs: `prime --help`, `prime broker` stay quick
    from prime.coordinator.spotcheck import SpotChecker, Verdict
    from prime.core.config import JobConfig

BLOBS_DIR = "blobs"


@dataclass(frozen=True)
class Checked:
    """One recomputed update."""

    round: int
    trainer: str
    node_key: bytes
    shard: int
    verdict: Verdict

    @property
    def outcome(self) -> str:
        """As the verdict's, with a failure in capitals (it is what a reader looks for)."""
        return "FAILED" if self.verdict.failed else self.verdict.outcome

    def as_dict(self) -> dict[str, Any]:
        v = self.verdict
        return {"round": self.round, "trainer": self.trainer, "node_key": self.node_key.hex(), "shard": self.shard,
                "distance": v.distance if math.isfinite(v.distance) else None, "outcome": v.outcome,
                "inconclusive": v.inconclusive, "seconds": round(v.seconds, 4)}


@dataclass(frozen=True)
class Committed:
    """What the data dir says was committed: per round its updates, and the model versions."""

    rounds: list[int]
    updates: list[tuple[int, bytes, str, str]]  # (round, node_key, node_name, digest)
    versions: dict[int, str]  # version → model digest


def read_committed(data_dir: Path, config: JobConfig, which: int | None) -> Committed:
    """The committed rounds (all, or round ``which``) of ``config``'s job in ``data_dir``."""
    path, db = open_read_only(data_dir)
    try:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("job_id") not in (None, config.job_id):
            raise ConfigError(f"{path} holds job {meta['job_id']!r}, but {config.source} is job {config.job_id!r}")
        rounds = [r for (r,) in db.execute("SELECT round FROM rounds ORDER BY round")]
        if which is not None:
            if which not in rounds:
                span = f"rounds {rounds[0]}..{rounds[-1]} are" if rounds else "no round is"
                raise ConfigError(f"round {which} is not committed in {data_dir} ({span} committed)")
            rounds = [which]
        chosen = set(rounds)
        updates = [
            (r, bytes(key), name, digest) for r, key, name, digest in db.execute(
                "SELECT round, node_key, node_name, digest FROM updates ORDER BY round, node_name, node_key")
            if r in chosen
        ]
        versions = dict(db.execute("SELECT version, digest FROM model_versions").fetchall())
    except sqlite3.Error as exc:
        raise CoordinatorError(f"cannot read {path}: {exc}") from None
    finally:
        db.close()
    return Committed(rounds, updates, versions)


def _names(updates: list[tuple[int, bytes, str, str]]) -> dict[bytes, str]:
    """Trainers choose their own names: a name two keys use gets the key's network id."""
    names = {key: name for _, key, name, _ in updates}
    taken = list(names.values())
    return {key: f"{name} ({network_id(key)})" if taken.count(name) > 1 else name for key, name in names.items()}


def audit(config: JobConfig, checker: SpotChecker, data_dir: Path, committed: Committed) -> Iterator[Checked | None]:
    """Recompute each sampled committed update; ``None`` for one the sample skipped."""
    from prime import codecs
    from prime.coordinator.spotcheck import Verdict
    from prime.blobs.store import BlobStore
    from prime.core.offload import state_bytes

    if not (data_dir / BLOBS_DIR).is_dir():
        raise CoordinatorError(f"no blob store at {data_dir / BLOBS_DIR}; is --data-dir right?")
    blobs = BlobStore(data_dir / BLOBS_DIR)
    cap = config.network.max_message_size
    names = _names(committed.updates)
    starts: dict[int, dict | str] = {}  # this round's start model, or why it could not be read (one round held)

    model_codec = codecs.from_config(config.compression.model)

    def read(digest: str, what: str, decoded_cap: int | None = None) -> dict | str:
        """A committed model (fp32) or update (in its codec, decoded), or why it cannot be read."""
        try:
            return codecs.decode(blobs.read_bytes(digest), max_bytes=cap, max_decoded_bytes=decoded_cap)
        except (BlobError, DecodeError) as exc:
            return f"the data dir's copy of {what} cannot be read: {exc}"

    def start_of(version: str | None, number: int) -> dict | str:
        """The model round ``number + 1`` started from, as trainers decoded it (``compression.model``)."""
        if not version:
            return f"model version {number} is not in the database"
        state = read(version, f"model version {number}")
        return codecs.roundtrip(model_codec, state) if isinstance(state, dict) else state

    for round_number, key, _, digest in committed.updates:
        if not checker.sampled(round_number, key):
            yield None
            continue
        shard = config.shard_of(key)
        if round_number not in starts:
            starts = {round_number: start_of(committed.versions.get(round_number - 1), round_number - 1)}
        start = starts[round_number]
        delta = read(digest, f"update {digest[:12]}", state_bytes(start) if isinstance(start, dict) else None)
        problem = start if isinstance(start, str) else delta if isinstance(delta, str) else None
        if problem:
            verdict = Verdict(False, math.nan, problem, 0.0)
        else:
            verdict = checker.check(start, delta, shard, config.num_shards, round_number)
        yield Checked(round_number, names[key], key, shard, verdict)


def _round_arg(text: str) -> int | None:
    if text == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a round number (1, 2, …) or all, got {text!r}")
    return value


def _rate_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, type=Path, help="the job config (TOML or JSON)")
    p.add_argument("--data-dir", required=True, type=Path, help="the coordinator's data dir (coordinator.sqlite, blobs/)")
    p.add_argument("--round", default="all", type=_round_arg, help="a committed round number, or all (default)")
    p.add_argument("--rate", type=_rate_arg,
                   help="fraction of updates to recompute (default: verification.spot_check_rate, 1 if that is 0)")
    p.add_argument("--seed", help="sampling seed when --rate < 1 (default: random, printed)")
    p.add_argument("--data-path", type=Path, help="data directory or file, for tasks that read files")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of lines")


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except PrimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from prime.coordinator.spotcheck import SpotChecker
    from prime.core.config import load_config
    from prime.tasks import task_of

    config = load_config(args.config)
    rate = args.rate if args.rate is not None else (config.verification.spot_check_rate or 1.0)
    seed = args.seed if args.seed is not None else secrets.token_hex(8)
    checker = SpotChecker(config, task_of(config), secret=seed.encode(), data_path=args.data_path, rate=rate)
    reason = checker.unverifiable()
    if reason:
        raise ConfigError(f"{config.source}: no update of this job can be recomputed: {reason}")
    committed = read_committed(args.data_dir, config, args.round)
    started = time.perf_counter()
    if not args.json:
        span = f"round {args.round}" if args.round else f"{len(committed.rounds)} committed rounds"
        print(f"prime verify: job {config.job_id}, {span}, {len(committed.updates)} updates, rate {rate:g}"
              f"{f' (seed {seed})' if rate < 1 else ''}, tolerance {checker.tolerance:g}")
        print(f"  {'round':>5}  {'trainer':<24} {'shard':>5}  {'distance':>10}  verdict", flush=True)
    results, skipped = [], 0
    try:
        for item in audit(config, checker, args.data_dir, committed):
            if item is None:
                skipped += 1
                continue
            results.append(item)
            if not args.json:
                print(_line(item), flush=True)
    finally:
        checker.close()
    counts = {o: sum(c.outcome == o for c in results) for o in ("passed", "FAILED", "inconclusive")}
    failed = [c for c in results if c.outcome == "FAILED"]
    seconds = time.perf_counter() - started
    if args.json:
        print(json.dumps({
            "job_id": config.job_id, "rounds": committed.rounds, "rate": rate, "seed": seed,
            "tolerance": checker.tolerance, "updates": len(committed.updates), "checked": len(results),
            "skipped": skipped, "passed": counts["passed"], "failed": counts["FAILED"],
            "inconclusive": counts["inconclusive"], "failed_trainers": sorted({c.trainer for c in failed}),
            "seconds": round(seconds, 3), "results": [c.as_dict() for c in results]}))
    else:
        print(f"checked {len(results)} of {len(committed.updates)} updates: {counts['passed']} passed, "
              f"{counts['FAILED']} failed, {counts['inconclusive']} inconclusive ({seconds:.1f} s)")
        if failed:
            print("failed: " + ", ".join(f"{c.trainer} (round {c.round})" for c in failed))
    return 1 if failed else 0


def _line(item: Checked) -> str:
    v = item.verdict
    distance = f"{v.distance:10.3e}" if not math.isnan(v.distance) else f"{'-':>10}"
    note = f": {v.inconclusive}" if v.inconclusive else ""
    return f"  {item.round:>5}  {item.trainer:<24} {item.shard:>5}  {distance}  {item.outcome}{note}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="prime verify", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
