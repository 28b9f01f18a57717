"""``prime-coordinator status``: what a coordinator's data dir says happened.

Reads the SQLite database read-only, so it is safe while the daemon runs.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from prime.coordinator import budget_status
from prime.coordinator.ledger import LedgerEntry, verify_chain
from prime.core.errors import CoordinatorError, SignatureError
from prime.core.identity import network_id
from prime.core.rewards import MICRO

DB_NAME = "coordinator.sqlite"


def open_read_only(data_dir: str | Path) -> tuple[Path, sqlite3.Connection]:
    """The coordinator database under ``data_dir``, opened read-only (status, export, verify)."""
    path = Path(data_dir) / DB_NAME
    if not path.exists():
        raise CoordinatorError(f"no coordinator database at {path}; is --data-dir right?")
    return path, sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def read_status(data_dir: str | Path) -> dict[str, Any]:
    _, db = open_read_only(data_dir)
    try:
        return _collect(db)
    finally:
        db.close()


def _collect(db: sqlite3.Connection) -> dict[str, Any]:
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    names = {key: name for key, name in db.execute("SELECT DISTINCT node_key, node_name FROM updates")}
    shared = {n for n in names.values() if list(names.values()).count(n) > 1}

    def who(key: bytes | None) -> str:
        """Trainers choose their own names: disambiguate a name two keys use."""
        if key is None:
            return "?"
        name = names.get(key)
        if name is None or name in shared:
            return f"{name} ({network_id(key)})" if name else network_id(key)
        return name

    rounds = [
        dict(zip(("round", "model_version", "participants", "samples", "accuracy", "loss", "seconds", "announcements",
                  "committed_at", "metrics", "timings"), (*r[:-2], *(json.loads(v) if v else {} for v in r[-2:]))))
        for r in db.execute(
            "SELECT round, model_version, participants, samples, accuracy, loss, seconds, announcements, committed,"
            " metrics, timings FROM rounds ORDER BY round"
        )
    ]
    versions = [
        dict(zip(("version", "digest", "size", "round"), r))
        for r in db.execute("SELECT version, digest, size, round FROM model_versions ORDER BY version")
    ]
    slowest = dict(db.execute("SELECT round, MAX(train_seconds) FROM updates GROUP BY round").fetchall())
    for row in rounds:
        row["slowest_train_seconds"] = slowest.get(row["round"])
    rejected = [
        {"round": r, "node": who(k) if n == "" else n, "key": k.hex() if k else None, "reason": reason, "detail": detail,
         "count": count}
        for r, k, n, reason, detail, count in db.execute(
            "SELECT round, node_key, node_name, reason, detail, count FROM rejections ORDER BY id"
        )
    ]
    entries = [LedgerEntry(*row) for row in db.execute(
        "SELECT seq, round, node_key, amount, prev_hash, hash, signature, kind, reason FROM ledger ORDER BY seq")]
    balances: dict[str, float] = {}
    slashed: dict[str, float] = {}
    penalties: dict[str, int] = {}
    for e in entries:
        if e.kind == "reward":
            balances[who(e.node_key)] = balances.get(who(e.node_key), 0) + e.amount / MICRO
        elif e.kind == "slash":
            slashed[who(e.node_key)] = slashed.get(who(e.node_key), 0) - e.amount / MICRO
        else:
            penalties[who(e.node_key)] = penalties.get(who(e.node_key), 0) + 1
    reputation = {who(k): {"score": score, "strikes": strikes, "excluded_until_round": until}
                  for k, score, strikes, until in db.execute(
                      "SELECT node_key, score, strikes, excluded_until FROM reputation ORDER BY node_key")}
    scores = {who(k): total for k, total in db.execute("SELECT node_key, SUM(score) FROM updates GROUP BY node_key")}
    chain_ok, chain_error = True, None
    if "coordinator_key" in meta:
        try:
            verify_chain(entries, bytes.fromhex(meta["coordinator_key"]))
        except SignatureError as exc:
            chain_ok, chain_error = False, str(exc)
    return {
        "job_id": meta.get("job_id"),
        "coordinator_key": meta.get("coordinator_key"),
        "task": meta.get("task"),
        "task_options": json.loads(meta["task_options"]) if "task_options" in meta else None,
        "config_digest": meta.get("config_digest"),
        "rounds_committed": len(rounds),
        "rounds": rounds,
        "model_versions": versions,
        "rejected_updates": rejected,
        "rewards": dict(sorted(balances.items())),
        "measured_scores": dict(sorted(scores.items())),
        "penalties": dict(sorted(penalties.items())),
        "slashed": dict(sorted(slashed.items())),
        "reputation": dict(sorted(reputation.items())),
        "ledger_entries": len(entries),
        "ledger_valid": chain_ok,
        "ledger_error": chain_error,
        **budget_status.collect(db),
    }


def format_status(status: dict[str, Any]) -> str:
    lines = [f"job {status['job_id']}  task {status.get('task') or '?'}  coordinator key {status['coordinator_key']}",
             f"committed rounds: {status['rounds_committed']}"]
    if status["rounds"]:
        names = list(dict.fromkeys(k for r in status["rounds"] for k in (r["metrics"] or
                                   {"accuracy": r["accuracy"], "loss": r["loss"]})))
        lines.append("  round  version  trainers  samples  " + "  ".join(f"{n[:13]:>13}" for n in names)
                     + "  seconds")
        for r in status["rounds"]:
            values = r["metrics"] or {"accuracy": r["accuracy"], "loss": r["loss"]}
            shown = "  ".join(f"{values[n]:>13.4f}" if values.get(n) is not None else f"{'-':>13}" for n in names)
            lines.append(f"  {r['round']:>5}  {r['model_version']:>7}  {r['participants']:>8}  {r['samples']:>7}"
                         f"  {shown}  {r['seconds']:>7.2f}")
    latest = status["model_versions"][-1] if status["model_versions"] else None
    if latest:
        lines.append(f"model versions: {len(status['model_versions'])} (latest v{latest['version']} {latest['digest'][:16]}…)")
    lines.append(f"rejected updates: {sum(r.get('count', 1) for r in status['rejected_updates'])}")
    for rej in status["rejected_updates"]:
        times = f" (x{rej['count']})" if rej.get("count", 1) > 1 else ""
        lines.append(f"  round {rej['round']:>4}  {rej['node']:<16} {rej['reason']}{times}: {rej['detail']}")
    lines.append(f"rewards (ledger {status['ledger_entries']} entries, chain {'valid' if status['ledger_valid'] else 'BROKEN: ' + str(status['ledger_error'])}):")
    for node, amount in status["rewards"].items():
        lines.append(f"  {node:<16} {amount:>12.6f}  (measured score {status['measured_scores'].get(node, 0.0):+.4f})")
    if status["penalties"] or status["reputation"]:
        lines.append("reputation (penalties, slashed tokens):")
        for node, standing in status["reputation"].items():
            until = standing["excluded_until_round"]
            out = f", excluded through round {until}" if until else ""
            lines.append(f"  {node:<16} {standing['score']:.2f}  {status['penalties'].get(node, 0)} penalties, "
                         f"{status['slashed'].get(node, 0.0):.6f} slashed, {standing['strikes']} strikes{out}")
    lines += budget_status.format_lines(status)
    return "\n".join(lines)
