"""``prime report --data-dir D --out DIR``: a run as ``index.html`` with PNG charts.

Reads the coordinator's database read-only (safe while it runs, through ``read_status``),
draws per-round held-out metrics, trainers per round, the round-time breakdown, reward
shares, refusals by reason and budget spend, and writes what each chart plots to
``report.json``. Every file is written atomically.
"""

from __future__ import annotations

import itertools

import html
import json
import time
from pathlib import Path
from typing import Any

from prime import __version__
from prime.atomic import write_atomic
from prime.coordinator.status import read_status
from prime.core.errors import ConfigError
from prime.observability import charts
from prime.observability.progress import steps

#: (file stem, caption, chart function, what it reads from the report's data)
CHARTS = (
    ("metrics", "Held-out metrics of each committed model, by round.", charts.round_metrics, "rounds"),
    ("participants", "Accepted updates (trainers) in each round.", charts.participants, "rounds"),
    ("round_time", "Where each round's wall time went.", charts.round_time, "rounds"),
    ("rewards", "Each trainer's share of the tokens credited in the signed ledger.", charts.reward_shares, "rewards"),
    ("refusals", "Updates refused, by reason (repeats counted).", charts.refusals, "refusals"),
    ("budget", "Budget spend by round, per limit.", charts.budget_spend, "budget"),
)


def budget_usage(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Spend per limit by round, for every limit the job set: ``{limit: {"rounds": [...], "spent":
    [...], "limit": L}}`` (cumulative, as the budget counts it; memory is the highest peak so far)."""
    budget = status.get("budget") or {}
    rows = budget.get("rounds", [])
    per_round = {
        "wall_seconds": [r["wall_seconds"] for r in rows],
        "rounds": [1.0 for _ in rows],
        "device_hours": [r["device_seconds"] / 3600.0 for r in rows],
        "cost": [r["cost"] for r in rows],
    }
    usage = {}
    for name, value in budget.get("limits", {}).items():
        if name == "memory_bytes_per_trainer":
            spent = list(itertools.accumulate((float(r["peak_memory_bytes"]) for r in rows), max))
        else:
            spent = list(itertools.accumulate(per_round[name]))
        usage[name] = {"rounds": [r["round"] for r in rows], "spent": spent, "limit": value["limit"]}
    return usage


def report_data(data_dir: str | Path) -> dict[str, Any]:
    """What the charts draw, from the coordinator's committed state."""
    status = read_status(data_dir)
    by_reason: dict[str, int] = {}
    for refusal in status["rejected_updates"]:
        by_reason[refusal["reason"]] = by_reason.get(refusal["reason"], 0) + refusal.get("count", 1)
    return {"status": status, "rounds": status["rounds"], "rewards": status["rewards"], "refusals": by_reason,
            "budget": budget_usage(status)}


def write_report(data_dir: str | Path, out: str | Path) -> Path:
    """Write ``index.html``, one PNG per chart and ``report.json`` under ``out``; return the page's path."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a directory for the report")
    data = report_data(data_dir)
    out.mkdir(parents=True, exist_ok=True)
    plotted: dict[str, Any] = {}
    with steps("drawing charts", len(CHARTS)) as advance:
        for stem, caption, draw, source in CHARTS:
            fig = draw(data[source])
            write_atomic(out / f"{stem}.png", charts.png(fig))
            plotted[stem] = {"file": f"{stem}.png", "caption": caption, "axes": charts.plotted(fig)}
            advance()
    status = data["status"]
    summary = {"job_id": status["job_id"], "task": status["task"], "rounds_committed": status["rounds_committed"],
               "ledger_valid": status["ledger_valid"], "data_dir": str(Path(data_dir).resolve()),
               "generated_at": time.time(), "prime_version": __version__}
    write_atomic(out / "report.json", (json.dumps({"summary": summary, "charts": plotted}, indent=1) + "\n").encode())
    page = out / "index.html"
    write_atomic(page, _html(summary, status, plotted).encode())
    return page


def _html(summary: dict[str, Any], status: dict[str, Any], plotted: dict[str, Any]) -> str:
    esc = html.escape
    final = status["rounds"][-1]["metrics"] if status["rounds"] else {}
    facts = [("job", summary["job_id"]), ("task", summary["task"]), ("rounds committed", summary["rounds_committed"]),
             ("ledger hash chain", "valid" if summary["ledger_valid"] else "BROKEN"),
             *((f"final held-out {k}", f"{v:.4f}") for k, v in final.items()),
             ("updates refused", sum(r.get("count", 1) for r in status["rejected_updates"])),
             ("data dir", summary["data_dir"])]
    rows = "\n".join(f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in facts)
    figures = "\n".join(
        f'<figure><img src="{esc(c["file"])}" alt="{esc(stem)}"><figcaption>{esc(c["caption"])}</figcaption></figure>'
        for stem, c in plotted.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>prime report: {esc(str(summary['job_id']))}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}}
th{{text-align:left;padding-right:1em}}figure{{margin:2em 0}}img{{max-width:100%}}
figcaption{{color:#555}}</style></head>
<body><h1>prime report: {esc(str(summary['job_id']))}</h1>
<table>{rows}</table>
{figures}
<p>Plotted values: <a href="report.json">report.json</a>. Generated by prime {esc(summary['prime_version'])}.</p>
</body></html>
"""
