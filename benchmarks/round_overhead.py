"""Per-round wall time of a real 4-trainer network, split into training and protocol.

Runs the demo network (broker, DHT node, coordinator, N trainers: separate processes
on 127.0.0.1, digits MLP) and, for every round after the first, takes
  wall     = time between consecutive commits (announce → train → verify → commit),
  training = the slowest selected trainer's local training time (the critical path),
  protocol = wall - training: everything prime adds (bus, blob transfers, DHT puts,
             signing, verification, contribution scoring, aggregation, evaluation, the
             SQLite commit).
Prints medians and the protocol/training ratio measured in the same run, and the share of
the wall time spent scoring contributions (the coordinator's own timing per round).

``--peer-assist`` sets ``network.peer_assist_min_bytes = 1``, so every model is
distributed peer-assisted (trainers look providers up in the DHT, fetch from each
other, the coordinator last) and prints where the trainers' model copies came from;
``--hidden 1024,1024`` swaps the digits MLP's hidden layers for a larger model.

    python benchmarks/round_overhead.py [--trainers 4] [--rounds 20] [--local-epochs 2] [--peer-assist]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from prime.demo import LocalNetwork
from prime.telemetry import read_metrics


def measure(trainers: int, rounds: int, local_epochs: int, workdir: Path, *, peer_assist: bool = False,
            hidden: list[int] | None = None) -> dict[str, float]:
    overrides = {"network": {"peer_assist_min_bytes": 1}} if peer_assist else {}
    if hidden:
        overrides["task"] = {"name": "digits", "options": {"hidden": hidden, "dirichlet_alpha": 0.5}}
    with LocalNetwork(workdir, trainers, rounds, local_epochs, **overrides) as net:
        net.start_all()
        deadline = time.monotonic() + 60 + 10 * rounds
        status = None
        while time.monotonic() < deadline:
            status = net.status()
            if status and status["rounds_committed"] >= rounds:
                break
            died = {n: rc for n, rc in net.dead().items() if n in ("broker", "dht", "coordinator") or rc != 0}
            if died:
                name = next(iter(died))
                sys.exit(f"{name} exited with code {died[name]}; last lines of its log:\n{net.log_tail(name)}")
            time.sleep(0.2)
        else:
            sys.exit(f"timed out; status {status}")
    return {**round_stats(status["rounds"]), **model_copies(net)}


def model_copies(net: LocalNetwork) -> dict[str, int]:
    """Where the trainers' model copies came from, summed over trainers (their metrics.json)."""
    fetches = [(read_metrics(net.trainer_dir(name)) or {}).get("model_fetch", {}) for name in net.trainer_names]
    keys = ("from_origin", "from_peer", "provider_lookups", "provider_lookup_timeouts")
    return {key: sum(f.get(key, 0) for f in fetches) for key in keys}


def round_stats(rows: list[dict]) -> dict[str, float]:
    """Medians over rounds 2..N: wall (commit to commit), slowest training, and the protocol rest."""
    walls = [b["committed_at"] - a["committed_at"] for a, b in zip(rows, rows[1:])]
    trains = [b["slowest_train_seconds"] for b in rows[1:]]
    protocol = [w - t for w, t in zip(walls, trains)]
    scoring = [b.get("timings", {}).get("scoring_s", 0.0) for b in rows[1:]]
    return {
        "scoring": statistics.median(scoring),
        "scoring_share": statistics.median(s / w for s, w in zip(scoring, walls)),
        "rounds": len(walls),
        "wall": statistics.median(walls),
        "training": statistics.median(trains),
        "protocol": statistics.median(protocol),
        "protocol_p90": sorted(protocol)[int(0.9 * (len(protocol) - 1))],
        "accuracy": rows[-1]["accuracy"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trainers", type=int, default=4)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--local-epochs", type=int, default=2)
    p.add_argument("--peer-assist", action="store_true", help="distribute every model peer-assisted")
    p.add_argument("--hidden", type=lambda v: [int(x) for x in v.split(",")], help="MLP hidden layers, e.g. 1024,1024")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="prime-bench-") as tmp:
        r = measure(args.trainers, args.rounds, args.local_epochs, Path(tmp), peer_assist=args.peer_assist,
                    hidden=args.hidden)
    model = f"MLP {args.hidden}" if args.hidden else "digits MLP"
    print(f"round_overhead: {args.trainers} trainers, {r['rounds']} rounds measured, {model}, "
          f"{args.local_epochs} local epochs, final accuracy {r['accuracy']:.4f}, "
          f"peer assist {'on' if args.peer_assist else 'off'}")
    print(f"  median per round: wall {r['wall']:.3f} s = training {r['training']:.3f} s (slowest trainer) "
          f"+ protocol {r['protocol']:.3f} s (p90 {r['protocol_p90']:.3f} s)")
    print(f"round_overhead: prime protocol {r['protocol']:.3f} s/round, training {r['training']:.3f} s/round, "
          f"protocol/training ratio {r['protocol'] / r['training']:.2f}x")
    print(f"round_overhead: contribution scoring {r['scoring']:.3f} s/round = {r['scoring_share']:.1%} of the round's "
          f"wall time (limit 10%)")
    print(f"  model copies: {r['from_origin']} from the coordinator, {r['from_peer']} from peers; "
          f"{r['provider_lookups']} provider lookups ({r['provider_lookup_timeouts']} timed out)")


if __name__ == "__main__":
    main()
