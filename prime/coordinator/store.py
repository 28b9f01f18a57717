"""The coordinator's durable state: one SQLite database, one transaction per commit.

A round commit writes the new model version, the round row, the accepted updates, the
strategy's server state (by digest of its blob), the reputation changes, and the reward,
penalty and slash entries in a single transaction, so after a crash the state is
exactly the last committed round: never half a round, never a round twice (invariants
1, 2 and 6). The unique ``(round, node_key, kind, reason)`` constraint on the ledger
makes double crediting impossible even if the code above it were wrong.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from prime.atomic import write_atomic
from prime.coordinator import budget_store
from prime.coordinator.ledger import GENESIS, LedgerEntry, make_entry
from prime.coordinator.reputation import Standing
from prime.core.budget import Spend
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
    seconds REAL NOT NULL, announcements INTEGER NOT NULL, committed REAL NOT NULL, metrics TEXT, timings TEXT);
CREATE TABLE IF NOT EXISTS updates(
    round INTEGER NOT NULL, node_key BLOB NOT NULL, node_name TEXT NOT NULL, digest TEXT NOT NULL,
    num_samples INTEGER NOT NULL, score REAL NOT NULL, train_seconds REAL, share REAL,
    PRIMARY KEY(round, node_key));
CREATE TABLE IF NOT EXISTS rejections(
    id INTEGER PRIMARY KEY, round INTEGER NOT NULL, node_key BLOB, node_name TEXT NOT NULL,
    reason TEXT NOT NULL, detail TEXT NOT NULL, at REAL NOT NULL, count INTEGER NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS pending_updates(
    round INTEGER NOT NULL, node_key BLOB NOT NULL, envelope BLOB NOT NULL, PRIMARY KEY(round, node_key));
CREATE TABLE IF NOT EXISTS ledger(
    seq INTEGER PRIMARY KEY, round INTEGER NOT NULL, node_key BLOB NOT NULL, amount INTEGER NOT NULL,
    prev_hash BLOB NOT NULL, hash BLOB NOT NULL, signature BLOB NOT NULL,
    kind TEXT NOT NULL DEFAULT 'reward', reason TEXT NOT NULL DEFAULT '', UNIQUE(round, node_key, kind, reason));
CREATE TABLE IF NOT EXISTS server_state(round INTEGER PRIMARY KEY, digest TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS reputation(
    node_key BLOB PRIMARY KEY, score REAL NOT NULL, strikes INTEGER NOT NULL, excluded_until INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class AcceptedUpdate:
    node_key: bytes
    node_name: str
    digest: str
    num_samples: int
    #: Measured contribution: held-out loss before minus after the update (``scoring.py``).
    score: float
    train_seconds: float | None = None
    #: The strategy's share of the aggregate (0: the strategy dropped it, e.g. Krum).
    share: float | None = None


@dataclass(frozen=True)
class LedgerCharge:
    """A penalty (amount 0: reputation lost) or a slash (negative micro-tokens from a stake)."""

    node_key: bytes
    kind: str
    amount: int
    reason: str


#: Columns added since the first schema: (table, column, type). Older databases get them on open.
_ADDED_COLUMNS = (("model_versions", "config_digest", "TEXT"), ("rounds", "metrics", "TEXT"),
                  ("rounds", "timings", "TEXT"), ("updates", "share", "REAL"),
                  ("rejections", "count", "INTEGER NOT NULL DEFAULT 1"))
_LEDGER_COLUMNS = "seq, round, node_key, amount, prev_hash, hash, signature, kind, reason"


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
    charges: list[LedgerCharge] = field(default_factory=list)
    #: Reputation after this round, for every key whose standing changed.
    standings: dict[bytes, Standing] = field(default_factory=dict)
    #: Digest of the strategy's server state after this round (a safetensors blob), if it has any.
    server_state_digest: str | None = None
    #: Where the round's time went (``scoring_s``, …).
    timings: dict[str, float] = field(default_factory=dict)
    #: This round's budget spend (``prime/core/budget.py``), per-update detail, and the stop it caused.
    spend: Spend | None = None
    spend_detail: dict = field(default_factory=dict)
    stop: dict | None = None
    #: More writes that commit with the round: each is called with the transaction's cursor and the
    #: new version (the model registry's lineage and promotions, ``registry.record_commit``).
    also_write: tuple[Callable[[sqlite3.Cursor, int], None], ...] = ()


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
        budget_store.ensure(self.db)
        for table, column, kind in _ADDED_COLUMNS:
            if column not in {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        if "kind" not in {row[1] for row in self.db.execute("PRAGMA table_info(ledger)")}:
            self._rebuild_ledger()

    def _rebuild_ledger(self) -> None:
        """A ledger of the first schema (rewards only, unique per round and key) gets kinds."""
        old = "seq, round, node_key, amount, prev_hash, hash, signature"
        self.db.executescript(
            "BEGIN; ALTER TABLE ledger RENAME TO ledger_v1;"
            + _SCHEMA[_SCHEMA.index("CREATE TABLE IF NOT EXISTS ledger"):_SCHEMA.index("CREATE TABLE IF NOT EXISTS server_state")]
            + f"INSERT INTO ledger({old}) SELECT {old} FROM ledger_v1; DROP TABLE ledger_v1; COMMIT;")

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
        rows = self.db.execute(f"SELECT {_LEDGER_COLUMNS} FROM ledger ORDER BY seq").fetchall()
        return [LedgerEntry(*row) for row in rows]

    def standings(self) -> dict[bytes, Standing]:
        rows = self.db.execute("SELECT node_key, score, strikes, excluded_until FROM reputation").fetchall()
        return {key: Standing(score, strikes, until) for key, score, strikes, until in rows}

    def latest_server_state(self) -> str | None:
        """Digest of the server state committed with the newest round that has one."""
        row = self.db.execute("SELECT digest FROM server_state ORDER BY round DESC LIMIT 1").fetchone()
        return row[0] if row else None

    def slashed(self) -> dict[bytes, int]:
        """Micro-tokens slashed per key so far (positive numbers)."""
        rows = self.db.execute("SELECT node_key, -SUM(amount) FROM ledger WHERE kind='slash' GROUP BY node_key")
        return {key: int(total) for key, total in rows}

    def committed_digests(self, round_number: int) -> list[str]:
        """Blob digests of the updates committed in ``round_number``."""
        return [d for (d,) in self.db.execute("SELECT digest FROM updates WHERE round=? ORDER BY node_key",
                                              (round_number,))]

    def median_claim(self, round_number: int) -> float | None:
        """The median sample count claimed by the updates committed in ``round_number``."""
        claims = sorted(n for (n,) in self.db.execute("SELECT num_samples FROM updates WHERE round=?", (round_number,)))
        if not claims:
            return None
        mid = len(claims) // 2
        return float(claims[mid]) if len(claims) % 2 else (claims[mid - 1] + claims[mid]) / 2

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
        """Store a refusal; the same refusal again (round, sender, reason) only raises its count."""
        row = self.db.execute("SELECT id FROM rejections WHERE round=? AND node_key IS ? AND reason=?",
                              (round_number, node_key, reason)).fetchone()
        if row:
            self.db.execute("UPDATE rejections SET count=count+1, detail=?, at=? WHERE id=?",
                            (detail[:500], time.time(), row[0]))
            return
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
            " committed, metrics, timings) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (commit.round, version, len(commit.updates), sum(u.num_samples for u in commit.updates),
             commit.metrics.get("accuracy"), commit.metrics.get("loss"), commit.seconds, commit.announcements, now,
             json.dumps(commit.metrics, sort_keys=True), json.dumps(commit.timings, sort_keys=True)),
        )
        cur.executemany(
            "INSERT INTO updates(round, node_key, node_name, digest, num_samples, score, train_seconds, share)"
            " VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
            [(commit.round, u.node_key, u.node_name, u.digest, u.num_samples, u.score if math.isfinite(u.score) else 0.0,
              u.train_seconds, u.share) for u in commit.updates],
        )
        cur.execute("DELETE FROM pending_updates WHERE round <= ?", (commit.round,))
        if commit.server_state_digest is not None:
            cur.execute("INSERT INTO server_state VALUES(?, ?)", (commit.round, commit.server_state_digest))
        cur.executemany(
            "INSERT OR REPLACE INTO reputation VALUES(?, ?, ?, ?)",
            [(key, s.score, s.strikes, s.excluded_until) for key, s in sorted(commit.standings.items())],
        )
        row = cur.execute("SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (row[0], row[1]) if row else (0, GENESIS)
        entries = [(key, amount, "reward", "") for key, amount in sorted(commit.rewards.items())]
        entries += [(c.node_key, c.amount, c.kind, c.reason)
                    for c in sorted(commit.charges, key=lambda c: (c.node_key, c.kind, c.reason))]
        for node_key, amount, kind, reason in entries:
            seq += 1
            entry = make_entry(identity, seq, commit.round, node_key, amount, prev, kind, reason)
            cur.execute(
                f"INSERT INTO ledger({_LEDGER_COLUMNS}) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (entry.seq, entry.round, entry.node_key, entry.amount, entry.prev_hash, entry.hash, entry.signature,
                 entry.kind, entry.reason),
            )
            prev = entry.hash
        if commit.spend is not None:
            budget_store.write_round(cur, commit.round, commit.spend, commit.spend_detail, commit.stop)
        for write in commit.also_write:
            write(cur, version)
        return version
