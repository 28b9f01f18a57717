"""The model registry: each committed version's lineage, metrics, metadata and stage.

Rows live in the coordinator's SQLite beside ``model_versions`` (so a standby's mirrored
snapshot carries them) and are written in the round's commit transaction: lineage (parent
version, round, contributors, strategy, task, config digest), the task's held-out metrics,
the stage it enters by the job's gates. Stages: ``training`` -> ``staging`` -> ``production``,
plus ``archived``. One version is in production at a time: promoting another archives it
(an archived version can be promoted again). Every stage change is a row in
``registry_promotions`` saying who (``gates``, ``operator``, ``registry``), why, whether
forced, and the gate checks; the caller puts the same in the node's audit log.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from prime.coordinator.gates import STAGES, GateResult, Gates, auto_stage, evaluate_gates
from prime.core.errors import CoordinatorError

#: One statement each: they also run inside the commit transaction (``executescript`` would commit it).
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS registry_versions("
    " version INTEGER PRIMARY KEY, parent INTEGER, round INTEGER NOT NULL, task TEXT NOT NULL,"
    " task_options TEXT NOT NULL, strategy TEXT NOT NULL, config_digest TEXT, contributors TEXT NOT NULL,"
    " metrics TEXT NOT NULL, metadata TEXT NOT NULL DEFAULT '{}', stage TEXT NOT NULL DEFAULT 'training',"
    " created REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS registry_promotions("
    " id INTEGER PRIMARY KEY, version INTEGER NOT NULL, from_stage TEXT NOT NULL, to_stage TEXT NOT NULL,"
    " at REAL NOT NULL, by TEXT NOT NULL, forced INTEGER NOT NULL DEFAULT 0, reason TEXT NOT NULL,"
    " gates TEXT NOT NULL DEFAULT '[]')",
)
#: meta key holding the job's gates as the coordinator last started with them (what ``promote`` checks).
GATES_META = "registry_gates"
MAX_METADATA_BYTES = 16 * 1024


@dataclass(frozen=True)
class Lineage:
    """Where a version came from: what the round driver knows when it commits."""

    parent: int | None
    round: int
    task: str
    task_options: dict[str, Any]
    strategy: str
    config_digest: str | None
    #: ``{"name", "key", "samples", "score", "share"}`` per accepted update.
    contributors: list[dict[str, Any]]
    metrics: dict[str, float]


@dataclass(frozen=True)
class Promotion:
    version: int
    from_stage: str
    to_stage: str
    by: str
    forced: bool
    reason: str
    gates: list[dict[str, Any]] = field(default_factory=list)
    at: float = 0.0

    def as_fields(self) -> dict[str, Any]:
        """What the audit log records of it."""
        return asdict(self)


@dataclass(frozen=True)
class VersionEntry:
    version: int
    digest: str
    size: int
    stage: str
    lineage: Lineage
    metadata: dict[str, Any]
    created: float
    promotions: list[Promotion]

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "stage": self.stage, "digest": self.digest, "size": self.size,
                "created": self.created, **asdict(self.lineage), "metadata": self.metadata,
                "promotions": [asdict(p) for p in self.promotions]}


def ensure_schema(db: sqlite3.Connection | sqlite3.Cursor) -> None:
    for statement in SCHEMA:
        db.execute(statement)


def bind(db: sqlite3.Connection, gates: Gates, genesis: Lineage) -> None:
    """At coordinator start: the tables, the job's gates (the latest start wins) and the genesis row."""
    ensure_schema(db)
    db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)",
               (GATES_META, json.dumps(gates if isinstance(gates, dict) else gates.model_dump(mode="json"),
                                       sort_keys=True)))
    if db.execute("SELECT 1 FROM model_versions WHERE version=0").fetchone() and \
            not db.execute("SELECT 1 FROM registry_versions WHERE version=0").fetchone():
        _insert(db, 0, genesis)


def stored_gates(db: sqlite3.Connection) -> dict[str, dict[str, float]]:
    """The gates the coordinator last started with (validated then against the job's task)."""
    row = db.execute("SELECT value FROM meta WHERE key=?", (GATES_META,)).fetchone()
    return json.loads(row[0]) if row else {}


def _insert(cur: sqlite3.Connection | sqlite3.Cursor, version: int, lineage: Lineage) -> None:
    cur.execute(
        "INSERT INTO registry_versions(version, parent, round, task, task_options, strategy, config_digest,"
        " contributors, metrics, created) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (version, lineage.parent, lineage.round, lineage.task, json.dumps(lineage.task_options, sort_keys=True),
         lineage.strategy, lineage.config_digest, json.dumps(lineage.contributors, sort_keys=True),
         json.dumps(lineage.metrics, sort_keys=True), time.time()))


def record_commit(cur: sqlite3.Cursor, version: int, lineage: Lineage, gates: Gates) -> list[Promotion]:
    """In the round's commit transaction: the version's row, and its promotion if it passes a stage's gates."""
    ensure_schema(cur)
    _insert(cur, version, lineage)
    stage, result = auto_stage(gates, lineage.metrics)
    if result is None:
        return []
    return move(cur, version, stage, by="gates", reason=f"passed the {stage} gates: {result.explain()}",
                forced=False, gates=result)


def move(cur: sqlite3.Connection | sqlite3.Cursor, version: int, to: str, *, by: str, reason: str, forced: bool,
         gates: GateResult | None) -> list[Promotion]:
    """Set ``version``'s stage to ``to`` and record it; entering production archives the version there."""
    row = cur.execute("SELECT stage FROM registry_versions WHERE version=?", (version,)).fetchone()
    if row is None:
        raise CoordinatorError(f"model version {version} is not in the registry")
    done = []
    if to == "production":
        for (previous,) in cur.execute("SELECT version FROM registry_versions WHERE stage='production' AND version<>?",
                                       (version,)).fetchall():
            done.append(_set_stage(cur, Promotion(previous, "production", "archived", "registry", False,
                                                  f"replaced in production by v{version}")))
    done.append(_set_stage(cur, Promotion(version, row[0], to, by, forced, reason, gates.checks if gates else [])))
    return done


def _set_stage(cur: sqlite3.Connection | sqlite3.Cursor, p: Promotion) -> Promotion:
    at = time.time()
    cur.execute("UPDATE registry_versions SET stage=? WHERE version=?", (p.to_stage, p.version))
    cur.execute("INSERT INTO registry_promotions(version, from_stage, to_stage, at, by, forced, reason, gates)"
                " VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
                (p.version, p.from_stage, p.to_stage, at, p.by, int(p.forced), p.reason[:1000],
                 json.dumps(p.gates, sort_keys=True)))
    return Promotion(p.version, p.from_stage, p.to_stage, p.by, p.forced, p.reason, p.gates, at)


# -- reads (also on a read-only connection) ---------------------------------------------
def _has_registry(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE name='registry_versions'").fetchone() is not None


def versions(db: sqlite3.Connection) -> list[VersionEntry]:
    """Every committed version, oldest first (versions committed before the registry existed get
    lineage from the round tables and stage ``training``)."""
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    rows = {}
    if _has_registry(db):
        for r in db.execute("SELECT version, parent, round, task, task_options, strategy, config_digest, contributors,"
                            " metrics, metadata, stage, created FROM registry_versions"):
            rows[r[0]] = r
    promotions: dict[int, list[Promotion]] = {}
    if _has_registry(db):
        for v, f, t, at, by, forced, reason, gates in db.execute(
                "SELECT version, from_stage, to_stage, at, by, forced, reason, gates"
                " FROM registry_promotions ORDER BY id"):
            promotions.setdefault(v, []).append(Promotion(v, f, t, by, bool(forced), reason, json.loads(gates), at))
    out = []
    for version, digest, size, round_number, created, config_digest in db.execute(
            "SELECT version, digest, size, round, created, config_digest FROM model_versions ORDER BY version"):
        if version in rows:
            r = rows[version]
            lineage = Lineage(r[1], r[2], r[3], json.loads(r[4]), r[5], r[6], json.loads(r[7]), json.loads(r[8]))
            out.append(VersionEntry(version, digest, size, r[10], lineage, json.loads(r[9]), r[11],
                                    promotions.get(version, [])))
            continue
        metrics = db.execute("SELECT metrics FROM rounds WHERE model_version=?", (version,)).fetchone()
        contributors = [{"name": n, "key": k.hex(), "samples": s, "score": sc, "share": sh} for n, k, s, sc, sh in
                        db.execute("SELECT node_name, node_key, num_samples, score, share FROM updates WHERE round=?"
                                   " ORDER BY node_key", (round_number,))] if version else []
        lineage = Lineage(version - 1 if version else None, round_number, meta.get("task", "?"),
                          json.loads(meta.get("task_options", "{}")), "?", config_digest, contributors,
                          json.loads(metrics[0]) if metrics and metrics[0] else {})
        out.append(VersionEntry(version, digest, size, "training", lineage, {}, created, []))
    return out


def resolve(entries: list[VersionEntry], spec: str) -> VersionEntry:
    """A version by number, ``latest``, or a stage name (its newest version in that stage)."""
    if not entries:
        raise CoordinatorError("no model version committed yet")
    if spec == "latest":
        return entries[-1]
    if spec in STAGES:
        found = [e for e in entries if e.stage == spec]
        if not found:
            raise CoordinatorError(f"no version is in {spec} (stages: "
                                   + ", ".join(f"v{e.version} {e.stage}" for e in entries[-5:]) + ", …)")
        return found[-1]
    number = spec[1:] if spec[:1] in ("v", "V") else spec
    if not number.isdigit():
        raise CoordinatorError(f"version {spec!r}: give a number (3 or v3), latest, or a stage ({', '.join(STAGES)})")
    by_number = {e.version: e for e in entries}
    if int(number) not in by_number:
        raise CoordinatorError(f"no model version {number} (versions 0..{entries[-1].version})")
    return by_number[int(number)]


# -- operator writes (a read-write connection of their own; the daemon may be running) ----
def open_writable(path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, timeout=30.0)
    db.execute("PRAGMA synchronous=FULL")
    ensure_schema(db)
    return db


def promote(db: sqlite3.Connection, spec: str, to: str, *, force: bool, reason: str, who: str) -> list[Promotion]:
    """An operator's promotion: the gates to enter ``to`` must pass unless ``force``; one transaction."""
    if to not in ("staging", "production", "archived"):
        raise CoordinatorError(f"--to {to!r}: promote to staging, production or archived")
    db.execute("BEGIN IMMEDIATE")
    try:
        entry = resolve(versions(db), spec)
        if not db.execute("SELECT 1 FROM registry_versions WHERE version=?", (entry.version,)).fetchone():
            _insert(db, entry.version, entry.lineage)  # committed before the registry existed
        if entry.stage == to:
            raise CoordinatorError(f"v{entry.version} is already in {to}")
        result = evaluate_gates(stored_gates(db), to, entry.lineage.metrics) if to != "archived" else None
        if result is not None and not result.passed and not force:
            raise CoordinatorError(f"v{entry.version} does not pass the gates to enter {to}: {result.explain()}; "
                                   "give --force (audited) to promote it anyway")
        forced = bool(result is not None and not result.passed)
        why = reason or ("forced past failing gates" if forced else
                         f"gates pass: {result.explain()}" if result is not None else "archived by hand")
        done = move(db, entry.version, to, by=f"operator:{who}", reason=why, forced=forced, gates=result)
        db.execute("COMMIT")
        return done
    except BaseException:
        db.execute("ROLLBACK")
        raise


def annotate(db: sqlite3.Connection, spec: str, values: dict[str, Any]) -> VersionEntry:
    """Merge free metadata into a version's (``None`` removes a key)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        entry = resolve(versions(db), spec)
        if not db.execute("SELECT 1 FROM registry_versions WHERE version=?", (entry.version,)).fetchone():
            _insert(db, entry.version, entry.lineage)
        merged = {k: v for k, v in {**entry.metadata, **values}.items() if v is not None}
        encoded = json.dumps(merged, sort_keys=True)
        if len(encoded) > MAX_METADATA_BYTES:
            raise CoordinatorError(f"metadata of v{entry.version} would be {len(encoded)} bytes, over "
                                   f"{MAX_METADATA_BYTES}")
        db.execute("UPDATE registry_versions SET metadata=? WHERE version=?", (encoded, entry.version))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return resolve(versions(db), str(entry.version))
