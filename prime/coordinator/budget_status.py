"""The budget and manifest part of ``prime-coordinator status``: spend against each limit, and why
the job stopped, read from the database alone (the limits are recorded at each start)."""

from __future__ import annotations

import sqlite3
from typing import Any

from prime.coordinator import budget_store
from prime.coordinator.manifests import MANIFEST_KEY
from prime.core.budget import describe


def collect(db: sqlite3.Connection) -> dict[str, Any]:
    """``budget``: limits, spend per limit, totals, per-round spend, stop; ``manifest``: its summary."""
    recorded = budget_store.read_meta(db, budget_store.LIMITS_KEY) or {}
    limits: dict[str, float] = recorded.get("limits", {})
    spent = budget_store.total_spend(db)
    values = {"wall_seconds": spent.wall_seconds, "rounds": float(spent.rounds),
              "device_hours": spent.device_seconds / 3600.0, "cost": spent.cost,
              "memory_bytes_per_trainer": float(spent.peak_memory_bytes)}
    return {
        "budget": {
            "limits": {name: {"spent": values[name], "limit": limits[name]} for name in values if name in limits},
            "spent": values,
            "notify_at": recorded.get("notify_at"),
            "rounds": budget_store.per_round(db),
            "stopped": budget_store.read_meta(db, budget_store.STOPPED_KEY),
        },
        "manifest": budget_store.read_meta(db, MANIFEST_KEY),
    }


def format_lines(status: dict[str, Any]) -> list[str]:
    lines = []
    manifest = status.get("manifest")
    if manifest:
        dataset, target = manifest["dataset"], manifest["compute_target"]
        lines.append(f"manifest {manifest['digest'][:16]}…: {dataset['name']} {dataset['version']}, "
                     f"{manifest['shards']} shards, task {manifest['task']['entry_point']}, prime "
                     f"{manifest['prime_version']}" + (f", on {target}" if target else ""))
    budget = status.get("budget")
    if not budget or not (budget["limits"] or budget.get("stopped")):
        return lines  # a job without limits: nothing to show
    spent = budget["spent"]
    lines.append(f"budget: spent {spent['wall_seconds']:.1f} s wall, {spent['rounds']:.0f} rounds, "
                 f"{spent['device_hours']:.4f} device-hours, cost {spent['cost']:.4f}")
    for name, value in budget["limits"].items():
        lines.append(f"  {describe(name, value['spent'], value['limit'])}")
    stop = budget.get("stopped")
    if stop:
        lines.append(f"stopped by its budget after round {stop['round']}: {stop['detail']}")
    return lines
