"""Byzantine robustness: honest trainers and attackers as real processes, per (strategy, attack).

Every cell is a fresh network on 127.0.0.1 (``LocalNetwork``: broker, DHT node, coordinator,
N trainer processes), of which the last f trainers are attackers (``benchmarks/attackers.py``:
a real trainer process whose ``local_update`` sends the attack). Per cell it prints the final
held-out accuracy (digits) or bits per byte (``--task stdlib-lm``) against the clean run with
the same strategy (all N honest), the attackers' share of the rewards, rounds committed /
rounds announced, the mean and the slowest seconds per round (a stalled round shows), and
the refusal reasons the coordinator recorded.

    python benchmarks/byzantine.py [--strategies fedavg,fedmedian,...] [--attacks signflip,alie,...]
                                   [--trainers 5] [--attackers 1] [--rounds 10] [--task digits|stdlib-lm]
                                   [--json [PATH]]

``--json`` alone prints one JSON object on stdout at the end (the table goes to stderr);
``--json PATH`` writes it to PATH. Attack parameters (``--scale``, ``--sigma``, ``--z``,
``--epsilon``, ``--noise``, ``--factor``) pass through to the attackers.
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prime.core.aggregation import build_strategy  # noqa: E402
from prime.demo import LocalNetwork  # noqa: E402

ATTACKERS_PY = str(Path(__file__).resolve().parent / "attackers.py")
ATTACKS = ("signflip", "noise", "alie", "ipm", "labelflip", "freerider", "stale", "inflate", "copy")
STRATEGIES = ("fedavg", "fedmedian", "fedtrimmedavg", "krum", "centeredclip")
#: The headline metric per task and whether higher is better.
HEADLINE = {"digits": ("accuracy", True), "stdlib-lm": ("bits_per_byte", False)}
DEFAULT_TIMEOUT = {"digits": 10.0, "stdlib-lm": 120.0}  # LM round 1 (warm-up) takes 30-55 s on 2 busy cores


def strategy_config(name: str, attackers: int) -> dict[str, Any]:
    """``[federated.aggregation]`` for a strategy, tuned to ``attackers`` (f) where it takes f."""
    if name == "fedtrimmedavg":
        return {"name": name, "beta": 0.2}
    if name in ("krum", "multikrum", "bulyan"):
        return {"name": name, "num_malicious": max(1, attackers)}
    return {"name": name}


def min_clients(aggregation: dict[str, Any], trainers: int, attackers: int) -> int:
    """Rounds need the honest trainers only (so refusing the attackers cannot stall them), but
    never fewer than the strategy needs (Krum with f = 1 needs 5: then every trainer)."""
    return max(build_strategy(aggregation).requirement().minimum, trainers - attackers, 1)


def attack_flags(attack: str, params: dict[str, Any], colluders: list[str]) -> list[str]:
    flags = ["--attack", attack]
    for key, value in params.items():
        if value is not None:
            flags += [f"--{key.replace('_', '-')}", str(value)]
    if colluders:
        flags += ["--colluders", ",".join(colluders)]
    return flags


def _wait_up(net: LocalNetwork, names: list[str], timeout: float) -> None:
    """Until every trainer process logged that it is up (key, engine, DHT peer, bus)."""
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending and time.monotonic() < deadline:
        for name in list(pending):
            if " up at " in net.log_tail(name, 200):
                pending.discard(name)
            elif net.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited with {net.procs[name].returncode}:\n{net.log_tail(name)}")
        time.sleep(0.1)
    if pending:
        raise RuntimeError(f"not up after {timeout}s: {sorted(pending)}")


def _announcements(net: LocalNetwork) -> int:
    """Rounds the coordinator announced (re-announcements included), from its log."""
    path = net.logs / "coordinator.log"
    text = path.read_text(errors="replace") if path.exists() else ""
    return len(re.findall(r"round \d+ announced", text))


def _accepted_per_node(net: LocalNetwork) -> dict[str, int]:
    try:
        db = sqlite3.connect(f"file:{net.coordinator_dir / 'coordinator.sqlite'}?mode=ro", uri=True)
        try:
            return dict(db.execute("SELECT node_name, COUNT(*) FROM updates GROUP BY node_name").fetchall())
        finally:
            db.close()
    except sqlite3.Error:
        return {}


def _attack_reports(net: LocalNetwork, names: list[str]) -> list[dict]:
    out = []
    for name in names:
        path = net.trainer_dir(name) / "attack.jsonl"
        if path.exists():
            out += [{"node": name, **json.loads(line)} for line in path.read_text().splitlines() if line.strip()]
    return out


def run_cell(*, task: str, strategy: str | dict[str, Any], attack: str | list[str], trainers: int, attackers: int,
             rounds: int, round_timeout: float, workdir: Path, params: dict[str, Any] | None = None,
             stall_after: float | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """One network: ``trainers`` trainers, the last ``attackers`` of them running ``attack``
    (``clean``: none; a list: one attack per attacker, a mixed cell), ``rounds`` rounds under
    ``strategy`` (a name, tuned to ``attackers``, or a whole ``[federated.aggregation]``).
    Returns the cell's figures."""
    started = time.monotonic()
    if isinstance(attack, str):
        plan = [] if attack == "clean" else [attack] * attackers
    else:
        plan, attackers = list(attack), len(attack)
        attack = "+".join(plan) or "clean"
    f = len(plan)
    aggregation = dict(strategy) if isinstance(strategy, dict) else strategy_config(strategy, attackers)
    strategy = aggregation["name"]
    overrides = dict(overrides or {})
    federated = {"round_timeout": round_timeout, "aggregation": aggregation,
                 "min_clients": min_clients(aggregation, trainers, attackers), **overrides.pop("federated", {})}
    net = LocalNetwork(workdir, trainers, rounds, local_epochs=1, task=task, federated=federated, **overrides)
    bad = net.trainer_names[trainers - f:]
    stall_after = stall_after or 3 * round_timeout + 30
    metric, _ = HEADLINE[task]
    status, stalled, error = None, False, None
    try:
        net.start_infrastructure()
        for i, name in enumerate(net.trainer_names):
            if name in bad:
                mine = plan[bad.index(name)]
                colluders = [b for b in bad if b != name]
                net.start_trainer(i, *attack_flags(mine, params or {}, colluders), program=[ATTACKERS_PY])
            else:
                net.start_trainer(i)
        # Every trainer up before the coordinator selects: round 1 then has all of them.
        _wait_up(net, net.trainer_names, 120)
        net.start_coordinator()
        last_progress, committed = time.monotonic() + 30, 0  # + the coordinator's own start-up
        while True:
            status = net.status() or status
            now_committed = status["rounds_committed"] if status else 0
            if now_committed >= rounds:
                break
            if now_committed > committed:
                committed, last_progress = now_committed, time.monotonic()
            if time.monotonic() - last_progress > stall_after:
                stalled = True
                break
            dead = {n: rc for n, rc in net.dead().items() if n in ("broker", "dht", "coordinator")
                    or (rc not in (0, None) and n in net.trainer_names)}
            if dead:
                name = next(iter(dead))
                error = f"{name} exited with {dead[name]}: {net.log_tail(name, 8)}"
                break
            time.sleep(0.2)
        deadline = time.monotonic() + 3  # let trainers see the last commit and sign off
        while time.monotonic() < deadline and any(net.procs[n].poll() is None for n in net.trainer_names):
            time.sleep(0.1)
    finally:
        net.stop_all()
    status = net.status() or status or {"rounds": [], "rounds_committed": 0, "rewards": {}, "rejected_updates": []}
    rows = status["rounds"]
    final = rows[-1]["metrics"].get(metric) if rows else None
    rewards = status["rewards"]
    total = sum(rewards.values())
    share = sum(v for k, v in rewards.items() if k in bad) / total if total > 0 and bad else (0.0 if bad else None)
    seconds = [r["seconds"] for r in rows]
    accepted = _accepted_per_node(net)
    return {
        "task": task, "strategy": strategy, "aggregation": aggregation, "attack": attack,
        "trainers": trainers, "attackers": dict(zip(bad, plan)), "rounds": rounds, "round_timeout": round_timeout,
        "min_clients": federated["min_clients"], "params": params or {},
        "metric": metric, "final": final, "per_round": [r["metrics"].get(metric) for r in rows],
        "rounds_committed": status["rounds_committed"],
        "rounds_attempted": max(_announcements(net), sum(r.get("announcements") or 1 for r in rows)),
        "seconds_per_round": sum(seconds) / len(seconds) if seconds else None,
        "slowest_round_seconds": max(seconds) if seconds else None,
        "stalled": stalled, "error": error,
        "attacker_reward_share": share,
        "reward_share": {k: v / total for k, v in rewards.items()} if total > 0 else {}, "rewards": rewards,
        "attacker_updates_accepted": sum(accepted.get(n, 0) for n in bad), "updates_accepted": accepted,
        "refusals": dict(Counter(r["reason"] for r in status["rejected_updates"])),
        "refused_attacker": dict(Counter(r["reason"] for r in status["rejected_updates"] if r["node"] in bad)),
        "attack_fallbacks": sum(1 for r in _attack_reports(net, bad) if r.get("fallback")),
        "wall_seconds": round(time.monotonic() - started, 1),
    }


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


HEADER = (f"{'strategy':<13} {'attack':<10} {'final':>7} {'Δclean':>7} {'atk share':>9} {'rounds':>7} "
          f"{'s/round':>7} {'slowest':>7} {'cell s':>6}  refusals")


def row(cell: dict, clean: dict | None) -> str:
    final, base = cell["final"], (clean or {}).get("final")
    delta = final - base if final is not None and base is not None and cell["attack"] != "clean" else None
    refusals = ", ".join(f"{k}×{v}" for k, v in sorted(cell["refusals"].items())) or "-"
    if cell["stalled"]:
        refusals += "  [STALLED]"
    if cell["error"]:
        refusals += f"  [ERROR {cell['error'][:80]}]"
    share = "-" if cell["attack"] == "clean" else _fmt(cell["attacker_reward_share"], ".1%")
    return (f"{cell['strategy']:<13} {cell['attack']:<10} {_fmt(final, '.4f'):>7} {_fmt(delta, '+.4f'):>7} "
            f"{share:>9} {cell['rounds_committed']:>3}/{cell['rounds_attempted']:<3} "
            f"{_fmt(cell['seconds_per_round'], '.2f'):>7} {_fmt(cell['slowest_round_seconds'], '.2f'):>7} "
            f"{cell['wall_seconds']:>6.0f}  {refusals}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=tuple(HEADLINE), default="digits")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--attacks", default=",".join(ATTACKS), help="'clean' runs first per strategy anyway")
    p.add_argument("--trainers", type=int, default=5)
    p.add_argument("--attackers", type=int, default=1)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--round-timeout", type=float, help="federated.round_timeout (default 10 digits, 120 stdlib-lm)")
    p.add_argument("--json", nargs="?", const="-", help="write the results as JSON to PATH (no PATH: stdout)")
    p.add_argument("--keep", type=Path, help="keep each cell's network directory under this folder")
    for flag in ("scale", "sigma", "z", "epsilon", "noise", "factor"):
        p.add_argument(f"--{flag}", type=float, help="passed to the attackers (benchmarks/attackers.py)")
    args = p.parse_args(argv)
    strategies = [s for s in args.strategies.split(",") if s]
    attacks = [a for a in args.attacks.split(",") if a and a != "clean"]
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown or not 0 <= args.attackers < args.trainers:
        p.error(f"unknown attacks {unknown}" if unknown else "need 0 <= --attackers < --trainers")
    timeout = args.round_timeout or DEFAULT_TIMEOUT[args.task]
    params = {k: getattr(args, k) for k in ("scale", "sigma", "z", "epsilon", "noise", "factor")}
    out = sys.stderr if args.json == "-" else sys.stdout
    say = lambda *a: print(*a, file=out, flush=True)  # noqa: E731
    metric, higher = HEADLINE[args.task]
    say(f"byzantine: task {args.task} ({metric}, {'higher' if higher else 'lower'} is better), "
        f"{args.trainers} trainers, "
        f"{args.attackers} attacker(s) ({args.attackers / args.trainers:.0%}), {args.rounds} rounds, "
        f"round_timeout {timeout:g}s; every cell a fresh network of real processes")
    say(HEADER)
    started, cells = time.monotonic(), []
    for strategy in strategies:
        clean = None
        for attack in ["clean", *attacks]:
            with tempfile.TemporaryDirectory(prefix=f"byz-{strategy}-{attack}-") as tmp:
                workdir = (args.keep / f"{strategy}-{attack}") if args.keep else Path(tmp)
                cell = run_cell(task=args.task, strategy=strategy, attack=attack, trainers=args.trainers,
                                attackers=args.attackers, rounds=args.rounds, round_timeout=timeout,
                                workdir=workdir, params={k: v for k, v in params.items() if v is not None})
            if attack == "clean":
                clean = cell
            cell["clean_final"] = clean["final"] if clean else None
            cells.append(cell)
            say(row(cell, clean))
    wall = time.monotonic() - started
    say(f"{len(cells)} cells in {wall:.0f}s ({wall / max(len(cells), 1):.1f}s per cell)")
    if args.json:
        text = json.dumps({"task": args.task, "trainers": args.trainers, "attackers": args.attackers,
                           "rounds": args.rounds, "round_timeout": timeout, "wall_seconds": round(wall, 1),
                           "cells": cells}, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
