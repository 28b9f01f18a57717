"""A real federated round with one trainer node on N GPUs.

A ``LocalNetwork`` on 127.0.0.1 (broker, DHT node, coordinator and two trainers, each a real process)
trains ``stdlib-lm`` for ``--rounds`` rounds of H = ``--local-steps`` steps. ``trainer-002`` is one node
of N ranks, ``torchrun --nproc-per-node N -m prime.trainer.cli … --device cuda`` (FSDP2 over NCCL, bf16
through ``training.precision``; rank 0 owns its key, bus, DHT peer, blobs and checkpoints; even N = 1
runs under torchrun). ``trainer-001`` is a single-rank trainer on GPU N (GPU 0, shared, if there are
only N). The run passes if every committed round includes the N-rank node's update and nothing was
refused; it prints each round's time and the node's own per-round log line (model fetch, decode,
train with its state load and full-state gather, encode and store).

    python benchmarks/multi_gpu_round.py --ranks 8 --preset 350m     # 8 GPUs
    python benchmarks/multi_gpu_round.py --ranks 1                   # one GPU
    python benchmarks/multi_gpu_round.py --ranks 2 --device cpu      # smoke run: two CPU ranks over Gloo
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.overlap import parse_sets, visible_gpu, with_options  # noqa: E402
from prime.coordinator.status import open_read_only  # noqa: E402
from prime.core.errors import PrimeError  # noqa: E402
from prime.core.identity import Identity  # noqa: E402
from prime.demo import LocalNetwork  # noqa: E402

NODE = 1  # trainer-002: the N-rank node
SINGLE = 0  # trainer-001: one rank


def job(args: argparse.Namespace) -> dict[str, dict]:
    """Sections over the ``stdlib-lm`` demo recipe; --set overrides any key."""
    sections: dict[str, dict] = {
        "training": {"batch_size": args.batch_size, "precision": args.precision, "compile": args.compile,
                     "learning_rate": args.learning_rate},
        "federated": {"round_timeout": args.round_timeout},
        # Models of a few hundred MB and up: fetched by digest, with time to move them.
        "network": {"timeout": 120.0, "max_message_size": 1 << 34},
        # The default bound (1000) is for small models; a larger model's honest update may exceed it.
        "security": {"max_update_norm": 1e6},
    }
    for section, values in parse_sets(args.set).items():
        sections[section] = {**sections.get(section, {}), **values}
    return sections


def node_rounds(net: LocalNetwork, name: str) -> list[int]:
    """The committed rounds that include ``name``'s update (the coordinator's database, read-only)."""
    key = Identity.load_or_create(net.trainer_dir(name)).public_key
    _, db = open_read_only(net.coordinator_dir)
    try:
        return [r for (r,) in db.execute("SELECT round FROM updates WHERE node_key=? ORDER BY round", (key,))]
    finally:
        db.close()


def check_devices(args: argparse.Namespace) -> tuple[int, str | None]:
    """GPUs visible (0 on CPU), or an error message."""
    if args.batch_size % args.ranks:
        return 0, f"--batch-size {args.batch_size} does not split evenly across {args.ranks} ranks"
    if args.device != "cuda":
        return 0, None
    import torch

    if not torch.cuda.is_available():
        return 0, "--device cuda needs CUDA GPUs (run it on the device machine), or --device cpu for a smoke run"
    gpus = torch.cuda.device_count()
    if args.ranks > gpus:
        return gpus, f"--ranks {args.ranks} needs {args.ranks} GPUs; {gpus} visible"
    return gpus, None


def run(args: argparse.Namespace, workdir: Path, gpus: int) -> dict[str, Any]:
    net = LocalNetwork(workdir, 2, args.rounds, task="stdlib-lm", local_steps=args.local_steps, **job(args))
    with_options(net, {"preset": args.preset, "validation_sequences": args.validation_sequences})
    name = net.trainer_names[NODE]
    started = time.monotonic()
    try:
        net.start_infrastructure()
        net.start_coordinator("--device", args.coordinator_device or args.device)
        with visible_gpu(args.ranks % gpus if gpus else None):
            net.start_trainer(SINGLE, "--device", args.device)
        net.start_trainer(NODE, "--device", args.device, ranks=args.ranks, torchrun=True)
        status = net.wait_for_rounds(args.rounds, args.timeout)
        wall = time.monotonic() - started
        deadline = time.monotonic() + 60  # trainers leave on their own once they see the last commit
        while time.monotonic() < deadline and any(net.procs[n].poll() is None for n in net.trainer_names):
            time.sleep(0.2)
        exits = {n: net.procs[n].poll() for n in net.trainer_names}
    except PrimeError as exc:
        raise SystemExit(f"multi_gpu_round: {exc}\n-- {name} log:\n{net.log_tail(name, 40)}") from None
    finally:
        net.stop_all()
    lines = [line for line in net.log_tail(name, 100_000).splitlines() if ": trained " in line]
    return {"rounds": status["rounds"], "rejected": status["rejected_updates"],
            "node_rounds": node_rounds(net, name), "node_log": lines, "exits": exits, "wall_s": wall,
            "node": name, "log_tail": net.log_tail(name, 40)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, default=2, help="N: ranks (GPUs) of the node")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--coordinator-device", choices=("cuda", "cpu"), help="default: --device")
    p.add_argument("--preset", default="tiny", help="stdlib-lm preset: tiny, 125m, 350m, 1b")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--local-steps", type=int, default=10, help="H: optimizer steps per round")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per micro-batch per trainer (node-wide)")
    p.add_argument("--precision", choices=("bf16", "fp32"), help="default: bf16 on cuda, fp32 on cpu")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False, help="training.compile")
    p.add_argument("--learning-rate", type=float, default=6e-4)
    p.add_argument("--validation-sequences", type=int, default=64, help="held-out windows the coordinator scores on")
    p.add_argument("--round-timeout", type=float, default=900.0)
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds for the whole run")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=JSON", help="any other job key")
    p.add_argument("--workdir", type=Path, help="keep the network's files here (default: a temp dir, removed)")
    p.add_argument("--json", type=Path, help="write the result here")
    args = p.parse_args()
    if args.ranks < 1 or args.rounds < 1:
        p.error("--ranks and --rounds must be at least 1")
    args.precision = args.precision or ("bf16" if args.device == "cuda" else "fp32")
    gpus, error = check_devices(args)
    if error:
        print(f"multi_gpu_round: error: {error}", file=sys.stderr)
        return 2
    if args.device == "cpu":
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # every process one intra-op thread: no oversubscription
    where = f"{gpus} GPUs visible" if gpus else f"CPU, {os.cpu_count()} cores"
    print(f"multi_gpu_round: stdlib-lm {args.preset}, {args.rounds} rounds x H = {args.local_steps}, batch "
          f"{args.batch_size}, {args.precision}; trainer-002 = torchrun of {args.ranks} rank(s) on {args.device}, "
          f"trainer-001 one rank; {where}", flush=True)
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="prime-mgr-")))
        result = run(args, workdir, gpus)
    for row in result["rounds"]:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in (row["metrics"] or {}).items())
        print(f"round {row['round']}: {row['seconds']:.2f}s, {row['participants']} trainers, {metrics}")
    print(f"{result['node']} ({args.ranks} rank(s)), its per-round log lines:")
    for line in result["node_log"]:
        print(f"  {line}")
    missing = sorted(set(range(1, args.rounds + 1)) - set(result["node_rounds"]))
    problems = [f"rounds without {result['node']}'s update: {missing}"] if missing else []
    problems += [f"refused: round {r['round']} {r['node']} {r['reason']}: {r['detail']}" for r in result["rejected"]]
    problems += [f"{n} exited with {code}" for n, code in result["exits"].items() if code != 0]
    if args.json:
        args.json.write_text(json.dumps({**vars(args), "json": str(args.json), "workdir": str(args.workdir),
                                         **result, "problems": problems}, indent=2, default=str))
    if problems:
        print("multi_gpu_round: FAILED\n  " + "\n  ".join(problems) + f"\n-- {result['node']} log:\n"
              + result["log_tail"], file=sys.stderr)
        return 1
    print(f"multi_gpu_round: ok: rounds {result['node_rounds']} include {result['node']}'s update, no refusals "
          f"({result['wall_s']:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
