"""The budget's rows in the coordinator database: spend per committed round, the limits, why it stopped.

``write_round`` runs inside the round's commit transaction (``store.py``), so a round's spend, and
the stop its spend caused, are committed with the round or not at all. The limits are written at
start, so ``prime-coordinator status`` (which has only the database) can show spend against them.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from prime.core.budget import BudgetConfig, Spend

SCHEMA = """
CREATE TABLE IF NOT EXISTS budget_spend(
    round INTEGER PRIMARY KEY, wall_seconds REAL NOT NULL, device_seconds REAL NOT NULL, cost REAL NOT NULL,
    peak_memory_bytes INTEGER NOT NULL, updates TEXT NOT NULL);
"""
LIMITS_KEY, STOPPED_KEY = "budget_limits", "stopped"


def ensure(db: sqlite3.Connection) -> None:
    db.executescript(SCHEMA)


def bind_limits(db: sqlite3.Connection, config: BudgetConfig) -> None:
    """Record the limits this start runs under (the latest start's win), with the notify share."""
    value = json.dumps({"limits": config.limits(), "notify_at": config.notify_at, "prices": config.prices},
                       sort_keys=True)
    db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)", (LIMITS_KEY, value))


def write_round(cur: sqlite3.Cursor, round_number: int, spend: Spend, updates: dict[str, Any],
                stop: dict[str, Any] | None) -> None:
    cur.execute("INSERT INTO budget_spend VALUES(?, ?, ?, ?, ?, ?)",
                (round_number, spend.wall_seconds, spend.device_seconds, spend.cost, spend.peak_memory_bytes,
                 json.dumps(updates, sort_keys=True)))
    if stop is not None:
        cur.execute("INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)",
                    (STOPPED_KEY, json.dumps(stop, sort_keys=True)))


def _has_table(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='budget_spend'").fetchone() is not None


def total_spend(db: sqlite3.Connection) -> Spend:
    """The job's spend over every committed round (its rounds counted from the rounds table, so a
    database from before budgets counts its rounds too)."""
    rounds = int(db.execute("SELECT COUNT(*) FROM rounds").fetchone()[0])
    wall = float(db.execute("SELECT COALESCE(SUM(seconds), 0) FROM rounds").fetchone()[0])
    if not _has_table(db):
        return Spend(rounds, wall)
    measured, device, cost, peak = db.execute(
        "SELECT COALESCE(SUM(wall_seconds), 0), COALESCE(SUM(device_seconds), 0), COALESCE(SUM(cost), 0),"
        " COALESCE(MAX(peak_memory_bytes), 0) FROM budget_spend").fetchone()
    unmeasured = float(db.execute("SELECT COALESCE(SUM(seconds), 0) FROM rounds WHERE round NOT IN "
                                  "(SELECT round FROM budget_spend)").fetchone()[0])
    return Spend(rounds, float(measured) + unmeasured, float(device), float(cost), int(peak))


def read_meta(db: sqlite3.Connection, key: str) -> dict[str, Any] | None:
    row = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    return json.loads(row[0]) if row else None


def per_round(db: sqlite3.Connection) -> list[dict[str, Any]]:
    if not _has_table(db):
        return []
    rows = db.execute("SELECT round, wall_seconds, device_seconds, cost, peak_memory_bytes, updates FROM budget_spend"
                      " ORDER BY round")
    return [{"round": r, "wall_seconds": w, "device_seconds": d, "cost": c, "peak_memory_bytes": p,
             "updates": json.loads(u)} for r, w, d, c, p, u in rows]
