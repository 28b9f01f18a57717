"""The coordinator's durable state: one SQLite database, one transaction per commit.

A round commit writes the new model version, the round row, the accepted updates
and the reward entries in a single transaction, so after a crash the state is
exactly the last committed round: never half a round, never a round twice. The
unique ``(round, node_key)`` constraint on the ledger makes double crediting
impossible even if the code above it were wrong.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from prime.atomic import write_atomic
from prime.coordinator.ledger import GENESIS, LedgerEntry, make_entry
from prime.core.errors import CoordinatorError
from prime.core.identity import Identity

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS model_versions(
    version INTEGER PRIMARY KEY, digest TEXT NOT NULL, size INTEGER NOT NULL,
    round INTEGER NOT NULL, created REAL NOT NULL, config_digest TEXT);
CREATE TABLE IF NOT EXISTS rounds(
    round INTEGER PRIMARY KEY, model_version INTEGER NOT NULL REFERENCES model_versions(version),
    participants INTEGER NOT NULL, samples INTEGER NOT NULL, accuracy REAL, loss REAL,
    seconds REAL NOT NULL, announcements INTEGER NOT NULL, committed REAL NOT NULL, metrics TEXT);
CREATE TABLE IF NOT EXISTS updates(
    round INTEGER NOT NULL, node_key BLOB NOT NULL, node_name TEXT NOT NULL, digest TEXT NOT NULL,
    num_samples INTEGER NOT NULL, score REAL NOT NULL, train_seconds REAL,
    PRIMARY KEY(round, node_key));
CREATE TABLE IF NOT EXISTS rejections(
    id INTEGER PRIMARY KEY, round INTEGER NOT NULL, node_key BLOB, node_name TEXT NOT NULL,
    reason TEXT NOT NULL, detail TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS pending_updates(
    round INTEGER NOT NULL, node_key BLOB NOT NULL, envelope BLOB NOT NULL, PRIMARY KEY(round, node_key));
CREATE TABLE IF NOT EXISTS ledger(
    seq INTEGER PRIMARY KEY, round INTEGER NOT NULL, node_key BLOB NOT NULL, amount INTEGER NOT NULL,
    prev_hash BLOB NOT NULL, hash BLOB NOT NULL, signature BLOB NOT NULL, UNIQUE(round, node_key));
"""


@dataclass(frozen=True)
class AcceptedUpdate:
    node_key: bytes
    node_name: str
    digest: str
    num_samples: int
    score: float
    train_seconds: float | None = None


#: Columns added since the first schema: (table, column, type). Older databases get them on open.
_ADDED_COLUMNS = (("model_versions", "config_digest", "TEXT"), ("rounds", "metrics", "TEXT"))


@dataclass(frozen=True)
class RoundCommit:
    round: int
    model_digest: str
    model_size: int
    updates: list[AcceptedUpdate]
    rewards: dict[bytes, int]
    #: The task's held-out metrics of the new model (``accuracy``, ``loss``, ``bits_per_byte``, …).
    metrics: dict[str, float]
    seconds: float
    announcements: int
    #: Digest of the job's agreed terms the round ran under (``prime/core/agreement.py``).
    config_digest: str | None = None


class CoordinatorStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._open()

    def _open(self) -> None:
        self.db = sqlite3.connect(self.path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.executescript(_SCHEMA)
        for table, column, kind in _ADDED_COLUMNS:
            if column not in {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    def close(self) -> None:
        self.db.close()

    # -- replication ------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """The whole database as one consistent byte image (what a standby mirrors).

        Copied through an in-memory database and marked as rollback-journal format, so the
        image is self-contained (no WAL file) and loads anywhere."""
        memory = sqlite3.connect(":memory:")
        try:
            self.db.backup(memory)
            image = bytearray(memory.serialize())
        finally:
            memory.close()
        image[18:20] = b"\x01\x01"  # file-format versions: 1 = rollback journal, 2 = WAL (sqlite.org/fileformat)
        return bytes(image)

    def restore(self, image: bytes, job_id: str, coordinator_key: bytes) -> None:
        """Replace this database with a primary's snapshot, after checking it is this job's."""
        probe = sqlite3.connect(":memory:")
        try:
            probe.deserialize(image)
            meta = dict(probe.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise CoordinatorError(f"checkpoint is not a coordinator database: {exc}") from None
        finally:
            probe.close()
        if meta.get("job_id") != job_id or meta.get("coordinator_key") != coordinator_key.hex():
            raise CoordinatorError(f"checkpoint belongs to job {meta.get('job_id')!r}, not {job_id!r}")
        self.db.close()
        for suffix in ("-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        write_atomic(self.path, image)
        self._open()


    # -- job identity -----------------------------------------------------------------
    def bind_job(self, job_id: str, coordinator_key: bytes) -> None:
        """Refuse to reuse a data dir for another job or another coordinator key."""
        for key, value in (("job_id", job_id), ("coordinator_key", coordinator_key.hex())):
            row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
            if row is None:
                self.db.execute("INSERT INTO meta(key, value) VALUES(?, ?)", (key, value))
            elif row[0] != value:
                raise CoordinatorError(
                    f"{self.path} belongs to {key}={row[0]!r}, not {value!r}; use another --data-dir"
                )

    def bind_task(self, name: str, options: dict, config_digest: str) -> None:
        """Record what this job trains (read by ``export`` and ``status``); the latest start wins."""
        rows = (("task", name), ("task_options", json.dumps(options, sort_keys=True)), ("config_digest", config_digest))
        self.db.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)", rows)

    # -- reads ------------------------------------------------------------------------
    def latest_version(self) -> tuple[int, str, int] | None:
        """(version, digest, size) of the newest committed model, or None before genesis."""
        return self.db.execute(
            "SELECT version, digest, size FROM model_versions ORDER BY version DESC LIMIT 1"
        ).fetchone()

    def last_committed_round(self) -> int:
        row = self.db.execute("SELECT MAX(round) FROM rounds").fetchone()
        return int(row[0] or 0)

    def committed_update_digest(self, round_number: int, node_key: bytes) -> str | None:
        """Digest of ``node_key``'s update committed in ``round_number``, if any."""
        row = self.db.execute(
            "SELECT digest FROM updates WHERE round=? AND node_key=?", (round_number, node_key)
        ).fetchone()
        return row[0] if row else None

    def ledger(self) -> list[LedgerEntry]:
        rows = self.db.execute(
            "SELECT seq, round, node_key, amount, prev_hash, hash, signature FROM ledger ORDER BY seq"
        ).fetchall()
        return [LedgerEntry(*row) for row in rows]

    # -- writes -----------------------------------------------------------------------
    def record_genesis(self, digest: str, size: int, config_digest: str | None = None) -> None:
        if self.latest_version() is None:
            self.db.execute(
                "INSERT INTO model_versions(version, digest, size, round, created, config_digest) VALUES(0, ?, ?, 0, ?, ?)",
                (digest, size, time.time(), config_digest),
            )

    def add_pending(self, round_number: int, node_key: bytes, envelope: bytes) -> None:
        """Remember a verified update of the open round, so a restart reuses it instead of refetching."""
        self.db.execute("INSERT OR REPLACE INTO pending_updates VALUES(?, ?, ?)", (round_number, node_key, envelope))

    def pending(self, round_number: int) -> dict[bytes, bytes]:
        """Verified-but-uncommitted updates of ``round_number`` (signer → signed record)."""
        return dict(self.db.execute(
            "SELECT node_key, envelope FROM pending_updates WHERE round=?", (round_number,)).fetchall())

    def record_rejection(self, round_number: int, node_key: bytes | None, node_name: str, reason: str, detail: str) -> None:
        self.db.execute(
            "INSERT INTO rejections(round, node_key, node_name, reason, detail, at) VALUES(?, ?, ?, ?, ?, ?)",
            (round_number, node_key, node_name, reason, detail[:500], time.time()),
        )

    def commit_round(self, commit: RoundCommit, identity: Identity) -> int:
        """Atomically commit a round; return the new model version."""
        with closing(self.db.cursor()) as cur:
            cur.execute("BEGIN IMMEDIATE")
            try:
                version = self._commit(cur, commit, identity)
                cur.execute("COMMIT")
                return version
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    def _commit(self, cur: sqlite3.Cursor, commit: RoundCommit, identity: Identity) -> int:
        last_round = int(cur.execute("SELECT COALESCE(MAX(round), 0) FROM rounds").fetchone()[0])
        if commit.round != last_round + 1:
            raise CoordinatorError(f"round {commit.round} cannot follow committed round {last_round}")
        latest = cur.execute("SELECT MAX(version) FROM model_versions").fetchone()[0]
        if latest is None:
            raise CoordinatorError("cannot commit a round before the genesis model is recorded")
        version = int(latest) + 1
        now = time.time()
        cur.execute(
            "INSERT INTO model_versions(version, digest, size, round, created, config_digest) VALUES(?, ?, ?, ?, ?, ?)",
            (version, commit.model_digest, commit.model_size, commit.round, now, commit.config_digest),
        )
        cur.execute(
            "INSERT INTO rounds(round, model_version, participants, samples, accuracy, loss, seconds, announcements,"
            " committed, metrics) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (commit.round, version, len(commit.updates), sum(u.num_samples for u in commit.updates),
             commit.metrics.get("accuracy"), commit.metrics.get("loss"), commit.seconds, commit.announcements, now,
             json.dumps(commit.metrics, sort_keys=True)),
        )
        cur.executemany(
            "INSERT INTO updates VALUES(?, ?, ?, ?, ?, ?, ?)",
            [(commit.round, u.node_key, u.node_name, u.digest, u.num_samples, u.score, u.train_seconds)
             for u in commit.updates],
        )
        cur.execute("DELETE FROM pending_updates WHERE round <= ?", (commit.round,))
        row = cur.execute("SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (row[0], row[1]) if row else (0, GENESIS)
        for node_key in sorted(commit.rewards):
            seq += 1
            entry = make_entry(identity, seq, commit.round, node_key, commit.rewards[node_key], prev)
            cur.execute(
                "INSERT INTO ledger VALUES(?, ?, ?, ?, ?, ?, ?)",
                (entry.seq, entry.round, entry.node_key, entry.amount, entry.prev_hash, entry.hash, entry.signature),
            )
            prev = entry.hash
        return version
