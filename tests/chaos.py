"""Chaos harness: SIGKILL random prime processes for a while, then check nothing was lost.

Runs a broker, a DHT node, a coordinator, a standby and N trainers as real processes.
Every few seconds it SIGKILLs one coordinator, standby or trainer at random and
restarts it with the same arguments and data dir a moment later. A bus observer
records every signed commit notice. At the end it checks the invariants:

- no round committed twice: every round was announced committed with one model only;
- no round lost: every commit ever announced is in the final history, unchanged;
- model versions and rounds are contiguous;
- every ledger entry is credited exactly once per (node, round), each round pays exactly
  its pool, and the signed hash chain verifies;
- the target accuracy is reached.

    python tests/chaos.py --duration 600          # a longer run than CI's
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prime.bus.client import BusClient  # noqa: E402
from prime.bus.topics import Topics  # noqa: E402
from prime.core.errors import PrimeError  # noqa: E402
from prime.core.records import RoundCommitted  # noqa: E402
from prime.core.rewards import to_micro  # noqa: E402
from prime.demo import LocalNetwork  # noqa: E402


class CommitObserver(threading.Thread):
    """Watches the bus for signed commit notices: round → set of model digests announced."""

    def __init__(self, net: LocalNetwork) -> None:
        super().__init__(daemon=True)
        self.net = net
        self.commits: dict[int, set[str]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
        try:
            await self._watch()
        except asyncio.CancelledError:
            pass

    async def _watch(self) -> None:
        config = self.net.config
        async with BusClient(config.network.mqtt_url, f"chaos-observer-{random.getrandbits(32):x}",
                             max_retries=20) as bus:
            await bus.subscribe(Topics(config.job_id).committed)
            async for _, payload in bus.messages():
                try:
                    record, _ = RoundCommitted.open(payload, signer=config.coordinator_public_key)
                except PrimeError:
                    continue
                self.commits.setdefault(record.round, set()).add(record.model_digest)

    def stop(self) -> None:
        if self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self.join(timeout=5)


def run_chaos(workdir: Path, *, duration: float, trainers: int = 6, seed: int | None = None,
              target_accuracy: float = 0.9, log=print) -> dict:
    rng = random.Random(seed)
    net = LocalNetwork(workdir, trainers=trainers, rounds=0, local_epochs=1,
                       federated={"min_clients": 3, "round_timeout": 15.0},
                       fault_tolerance={"max_retries": 5})
    restart = {"coordinator": net.start_coordinator, "standby": net.start_standby}
    restart.update({name: (lambda i=i: net.start_trainer(i)) for i, name in enumerate(net.trainer_names)})
    kills: list[tuple[float, str]] = []
    observer = CommitObserver(net)
    started = time.monotonic()
    try:
        net.start_infrastructure()
        observer.start()
        net.start_coordinator()
        net.start_standby()
        for i in range(trainers):
            net.start_trainer(i)
        _wait_rounds(net, 2, 120)
        log(f"chaos: network up, killing a random process every 2-5 s for {duration:.0f} s")
        chaos_until = time.monotonic() + duration
        while time.monotonic() < chaos_until:
            time.sleep(rng.uniform(2.0, 5.0))
            victim = rng.choice(sorted(restart))
            net.signal(victim, signal.SIGKILL)
            kills.append((time.monotonic() - started, victim))
            time.sleep(rng.uniform(0.5, 2.0))
            restart[victim]()
        before = (net.status() or {}).get("rounds_committed", 0)
        log(f"chaos: {len(kills)} kills done; letting the network settle")
        _wait_rounds(net, before + 3, 180)
        _wait_until(lambda: _accuracy(net) >= target_accuracy, 180)
    finally:
        net.stop_all()
        observer.stop()
    status = net.status()  # read only once everything has stopped: the observer saw every commit
    others = [LocalNetwork.status_of(d) for d in (net.coordinator_dir, net.standby_dir)]
    report = check_invariants(net, status, observer.commits, target_accuracy)
    report.update(kills=len(kills), victims=sorted({v for _, v in kills}),
                  wall_seconds=round(time.monotonic() - started, 1),
                  mirrors_consistent=all(_is_prefix(o, status) for o in others if o))
    return report


def check_invariants(net: LocalNetwork, status: dict, commits: dict[int, set[str]], target: float) -> dict:
    rounds = [r["round"] for r in status["rounds"]]
    versions = {v["round"]: v["digest"] for v in status["model_versions"] if v["round"] > 0}
    double = {r: sorted(d) for r, d in commits.items() if len(d) > 1}
    lost = sorted(r for r, d in commits.items() if len(d) == 1 and versions.get(r) not in d)
    db_dir = net.coordinator_dir if status == LocalNetwork.status_of(net.coordinator_dir) else net.standby_dir
    db = sqlite3.connect(f"file:{db_dir / 'coordinator.sqlite'}?mode=ro", uri=True)
    try:
        credited_twice = db.execute(
            "SELECT COUNT(*) FROM (SELECT round, node_key FROM ledger GROUP BY round, node_key HAVING COUNT(*) > 1)"
        ).fetchone()[0]
        per_round = db.execute("SELECT round, SUM(amount) FROM ledger GROUP BY round").fetchall()
    finally:
        db.close()
    pool = to_micro(net.config.federated.reward_pool)
    return {
        "rounds_committed": len(rounds),
        "rounds_contiguous": rounds == list(range(1, len(rounds) + 1)),
        "versions_contiguous": [v["version"] for v in status["model_versions"]] == list(range(len(rounds) + 1)),
        "rounds_reannounced": sum(r["announcements"] - 1 for r in status["rounds"]),
        "rounds_committed_twice": double,
        "rounds_lost": lost,
        "credited_twice": credited_twice,
        "pools_exact": all(total == pool for _, total in per_round) and len(per_round) == len(rounds),
        "ledger_valid": status["ledger_valid"],
        "final_accuracy": status["rounds"][-1]["accuracy"],
        "target_accuracy": target,
    }


def passed(report: dict) -> bool:
    return (report["rounds_contiguous"] and report["versions_contiguous"] and not report["rounds_committed_twice"]
            and not report["rounds_lost"] and report["credited_twice"] == 0 and report["pools_exact"]
            and report["ledger_valid"] and report["final_accuracy"] >= report["target_accuracy"]
            and report["mirrors_consistent"])


def _is_prefix(other: dict, final: dict) -> bool:
    """A coordinator's history must be a prefix of the final one (a standby lags, never diverges)...
    except for a commit it made locally and died before publishing: only its last round may differ."""
    mine = [v["digest"] for v in other["model_versions"]]
    theirs = [v["digest"] for v in final["model_versions"]]
    return mine[:-1] == theirs[: len(mine) - 1]


def _accuracy(net: LocalNetwork) -> float:
    status = net.status()
    return status["rounds"][-1]["accuracy"] if status and status["rounds"] else 0.0


def _wait_rounds(net: LocalNetwork, count: int, timeout: float) -> dict:
    _wait_until(lambda: (net.status() or {}).get("rounds_committed", 0) >= count, timeout)
    return net.status()


def _wait_until(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    raise TimeoutError(f"condition not met within {timeout}s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=120.0, help="seconds of killing (default 120)")
    p.add_argument("--trainers", type=int, default=6)
    p.add_argument("--seed", type=int)
    p.add_argument("--workdir", type=Path)
    args = p.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="prime-chaos-"))
    report = run_chaos(workdir, duration=args.duration, trainers=args.trainers, seed=args.seed)
    print(json.dumps(report, indent=2))
    print(f"chaos: kills {report['kills']}, rounds committed {report['rounds_committed']}, "
          f"rounds re-announced {report['rounds_reannounced']}, rounds lost {len(report['rounds_lost'])}; "
          f"{'PASS' if passed(report) else 'FAIL'} (logs in {workdir}/logs)")
    return 0 if passed(report) else 1


if __name__ == "__main__":
    sys.exit(main())
